//! Passwords: argon2id with a random salt per hash (PHC string format), and generated
//! passwords for the bootstrap admin.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use rand::Rng as _;

/// Shortest password accepted anywhere.
pub const MIN_LENGTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("a password needs at least {MIN_LENGTH} characters")]
    TooShort,
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// # Errors
/// [`PasswordError::TooShort`]; [`PasswordError::Hashing`] should the hasher itself fail.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < MIN_LENGTH {
        return Err(PasswordError::TooShort);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| PasswordError::Hashing(error.to_string()))
}

/// Whether `password` matches `stored`. A malformed stored hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Longest password accepted: argon2 reads all of it, so an unbounded one is a way to burn CPU.
pub const MAX_LENGTH: usize = 1024;

/// How many password checks run at once: half the cores (at least one), so that a flood of
/// logins, which queues here, can never take more than half the machine.
fn hashing_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> =
        std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(hasher_count()));
    &SLOTS
}

fn hasher_count() -> usize {
    (std::thread::available_parallelism().map_or(2, std::num::NonZero::get) / 2).max(1)
}

type Job = Box<dyn FnOnce() + Send>;

/// The threads that run argon2 ([`hasher_count`]): their own, not the async workers and not
/// tokio's blocking pool, and scheduled as background work (Linux `SCHED_IDLE`, lowest
/// niceness), so that the kernel runs whatever else wants a core first: requests, probes, the
/// database. A flood of logins then slows logins, not the API.
fn hashers() -> &'static std::sync::mpsc::Sender<Job> {
    static HASHERS: std::sync::LazyLock<std::sync::mpsc::Sender<Job>> = std::sync::LazyLock::new(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        for index in 0..hasher_count() {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new().name(format!("qm-password-{index}")).spawn(move || {
                background_priority();
                loop {
                    let job = receiver.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a password hashing thread");
            }
        }
        sender
    });
    &HASHERS
}

/// Lowers the calling thread to background scheduling; where the system refuses, it keeps its
/// priority (the semaphore still bounds how many cores hashing takes).
fn background_priority() {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(error) = set_thread_priority_and_policy(thread_native_id(), thread_priority::ThreadPriority::Min, idle) {
        tracing::warn!(?error, "cannot lower the password hashing thread's priority");
    }
}

/// How long a password check waits for a hashing slot before the API answers 503.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `work` (argon2) on the [`hashers`], at most [`hashing_slots`] at once.
///
/// # Errors
/// 503 when no slot frees up within [`SLOT_WAIT`].
async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, crate::problem::Problem> {
    let busy = || crate::problem::Problem::unavailable("the API is busy checking passwords; try again shortly");
    let permit =
        tokio::time::timeout(SLOT_WAIT, hashing_slots().acquire()).await.map_err(|_| busy())?.map_err(|_| busy())?;
    let (done, result) = tokio::sync::oneshot::channel();
    hashers()
        .send(Box::new(move || {
            let _ = done.send(work());
        }))
        .map_err(|_| busy())?;
    let result = result.await.map_err(|_| busy());
    drop(permit);
    result
}

/// [`verify`] off the async workers.
///
/// # Errors
/// 503 when the API is saturated with password checks.
pub async fn verify_async(password: &str, stored: &str) -> Result<bool, crate::problem::Problem> {
    let (password, stored) = (password.to_owned(), stored.to_owned());
    off_the_workers(move || verify(&password, &stored)).await
}

/// [`hash`] off the async workers.
///
/// # Errors
/// 503 when the API is saturated with password checks; 422 naming `field` for a password
/// that is too short or too long.
pub async fn hash_async(field: &str, password: &str) -> Result<String, crate::problem::Problem> {
    if password.chars().count() > MAX_LENGTH {
        return Err(crate::problem::Problem::invalid(field, format!("must be at most {MAX_LENGTH} characters")));
    }
    let password = password.to_owned();
    off_the_workers(move || hash(&password))
        .await?
        .map_err(|error| crate::problem::Problem::invalid(field, error.to_string()))
}

/// A real hash of a password nobody has, verified against when a login names no account, so
/// that the answer takes as long as for a real account and does not reveal which exist.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| hash(&generate()).unwrap_or_default());
    DUMMY.as_str()
}

/// 24 random letters and digits (about 143 bits).
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..24).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let stored = hash("correct horse battery").expect("hash");
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(verify("correct horse battery", &stored));
        assert!(!verify("correct horse battery!", &stored));
        assert!(!verify("anything", "not a hash"));
    }

    #[test]
    fn a_short_password_is_refused() {
        assert!(matches!(hash("short"), Err(PasswordError::TooShort)));
    }

    #[test]
    fn generated_passwords_are_long_and_different() {
        let (first, second) = (generate(), generate());
        assert_eq!(first.len(), 24);
        assert_ne!(first, second);
    }
}
