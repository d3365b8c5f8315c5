//! Secrets handed to people and programs (session tokens, API keys, bootstrap and worker tokens):
//! generated with 256 random bits, stored only as their SHA-256.

use rand::Rng as _;
use sha2::{Digest as _, Sha256};

/// A new secret: `prefix` and 43 random base62 characters (about 256 bits).
pub fn generate(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let random: String = (0..43).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect();
    format!("{prefix}{random}")
}

/// How tokens are stored: SHA-256, hex. Tokens carry 256 random bits, so no salt or slow hash is
/// needed, and lookups stay one indexed query.
pub fn hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// SHA-256 of `bytes`, lowercase hex (as `sha256sum` prints it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}
