//! Test support: a uniquely named PostgreSQL database per test, created on the server named by
//! `QM_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and dropped by
//! [`TestDatabase::drop_database`]. Used by this crate's suite and by every service's
//! integration tests.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty database named `qm_test_<random>`.
    ///
    /// # Panics
    /// When PostgreSQL cannot be reached: tests that need it fail loudly instead of skipping.
    pub async fn create() -> Self {
        let admin_url = std::env::var("QM_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let name = format!("qm_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is not reachable at {} ({error}): start it (see README, \"Services the tests need\") or set QM_TEST_DATABASE_URL",
                crate::redact(&admin_url)
            )
        });
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create the test database");
        let mut url = url::Url::parse(&admin_url).expect("QM_TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        Self { admin_url, name, url: url.to_string() }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `VACUUM ANALYZE`, as after a bulk load: benches measure the same settled tables
    /// whether or not autovacuum happens to run during a measurement.
    ///
    /// # Panics
    /// When the database cannot be reached or vacuumed.
    pub async fn settle(&self) {
        let mut connection = PgConnection::connect(&self.url).await.expect("connect to the test database");
        sqlx::query("VACUUM ANALYZE").execute(&mut connection).await.expect("vacuum the test database");
    }

    /// Drops the database, closing whatever connections are still open to it.
    pub async fn drop_database(&self) {
        match PgConnection::connect(&self.admin_url).await {
            Ok(mut admin) => {
                if let Err(error) = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                    .execute(&mut admin)
                    .await
                {
                    eprintln!("could not drop test database {}: {error}", self.name);
                }
            }
            Err(error) => eprintln!("could not drop test database {}: {error}", self.name),
        }
    }
}

/// A catalog offer for tests that need an instance somewhere: fresh catalog ids, 1 EUR per hour.
pub fn offer(provider: &str, zone: &str, instance_type: &str) -> crate::Offer {
    crate::Offer {
        provider: provider.to_owned(),
        region: zone.rsplit_once('-').map_or(zone, |(region, _)| region).to_owned(),
        zone_id: uuid::Uuid::now_v7().into(),
        zone: zone.to_owned(),
        instance_type_id: uuid::Uuid::now_v7().into(),
        instance_type: instance_type.to_owned(),
        gpu_model: None,
        gpu_count: 0,
        gpu_memory_gb: 0,
        hourly_price_micros: 1_000_000,
        currency: "EUR".to_owned(),
    }
}

/// An instance of every shape the tests of its JSON need: `text` in each of its text fields,
/// `optional` choosing which optional fields are set, `fraction_nanos` the timestamps'
/// fraction, `number` the numbers (and the state).
pub fn instance(text: &str, optional: bool, fraction_nanos: u32, number: i64) -> crate::Instance {
    use chrono::TimeZone;
    let at = chrono::Utc.timestamp_opt(1_796_500_000 + number.rem_euclid(1_000_000), fraction_nanos).unwrap();
    let states = qm_domain::InstanceState::ALL;
    crate::Instance {
        id: qm_domain::InstanceId::new(),
        organization_id: qm_domain::OrganizationId::new(),
        deployment_id: optional.then(qm_domain::DeploymentId::new),
        provider: format!("sim{text}"),
        zone_id: uuid::Uuid::now_v7().into(),
        zone: text.to_owned(),
        instance_type_id: uuid::Uuid::new_v4().into(),
        instance_type: format!("{text}-type"),
        model: format!("org/{text}"),
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        state: states[number.unsigned_abs() as usize % states.len()],
        state_changed_at: at,
        #[allow(clippy::cast_possible_truncation)]
        progress_percent: (number % 101) as i32,
        provider_instance_id: optional.then(|| format!("i-{text}")),
        address: optional.then(|| "10.0.0.1:8000".to_owned()),
        hourly_price_micros: number,
        currency: "EUR".into(),
        failure_reason: (!optional).then(|| text.to_owned()),
        deleted_by_provider: optional,
        archived: !optional,
        #[allow(clippy::cast_possible_truncation)]
        revision: optional.then_some(number as i32),
        created_at: at,
        updated_at: chrono::Utc.timestamp_opt(0, 0).unwrap(),
    }
}
