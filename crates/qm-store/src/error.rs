//! Store errors. Messages never contain credentials or SQL.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database migration failed: {0}")]
    Migration(String),
    /// A unique constraint refused the write; `field` names the column when known.
    #[error("already exists: {field}")]
    Conflict { field: String },
    /// A row referenced by the write does not exist.
    #[error("referenced record does not exist")]
    MissingReference,
    /// A stored value could not be read back into its type (a schema or data bug).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(String),
    /// A state change the instance lifecycle does not have (a bug in the caller).
    #[error(transparent)]
    IllegalTransition(#[from] qm_domain::TransitionError),
}

impl StoreError {
    /// Whether trying again may succeed (the database was unreachable or busy).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(database_error) if database_error.is_unique_violation() => {
                StoreError::Conflict { field: conflicting_field(database_error.constraint(), database_error.message()) }
            }
            sqlx::Error::Database(database_error) if database_error.is_foreign_key_violation() => {
                StoreError::MissingReference
            }
            sqlx::Error::Database(database_error)
                if database_error.code().is_some_and(|code| code == "5" || code == "6" || code == "517") =>
            {
                // SQLITE_BUSY / SQLITE_LOCKED: another writer held the database too long.
                StoreError::Unavailable(database_error.message().to_owned())
            }
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(error.to_string())
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                StoreError::Corrupt(error.to_string())
            }
            _ => StoreError::Database(error.to_string()),
        }
    }
}

/// The column a unique violation is about. PostgreSQL names the constraint
/// (`users_username_key`); SQLite names the column (`UNIQUE constraint failed: users.username`).
fn conflicting_field(constraint: Option<&str>, message: &str) -> String {
    if let Some(constraint) = constraint {
        let trimmed = constraint.strip_suffix("_key").unwrap_or(constraint);
        return match trimmed.split_once('_') {
            Some((_table, column)) if !column.is_empty() => column.to_owned(),
            _ => trimmed.to_owned(),
        };
    }
    message
        .rsplit(": ")
        .next()
        .and_then(|columns| columns.split(", ").last())
        .and_then(|column| column.split('.').next_back())
        .unwrap_or("unknown")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::conflicting_field;

    #[test]
    fn postgres_constraint_names_map_to_their_column() {
        assert_eq!(conflicting_field(Some("users_username_key"), ""), "username");
        assert_eq!(conflicting_field(Some("organizations_slug_key"), ""), "slug");
    }

    #[test]
    fn sqlite_messages_map_to_their_column() {
        assert_eq!(conflicting_field(None, "UNIQUE constraint failed: users.email"), "email");
    }
}
