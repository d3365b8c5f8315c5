//! Who is calling: bearer tokens and the session cookie, API keys, roles, the client's address
//! (behind trusted proxies only), and the login rate limiter.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use qm_config::IpBlock;
use qm_domain::{ApiKeyId, OrganizationId, Role, SessionId, UserId};

use crate::AppState;
use crate::problem::Problem;
use crate::routes::users::UserView;

pub const SESSION_COOKIE: &str = "qm_session";
pub const API_KEY_PREFIX: &str = "qm_";
pub const SESSION_TOKEN_PREFIX: &str = "qms_";
/// A key's `last_used_at` is written at most this often.
pub const LAST_USED_GRANULARITY: Duration = Duration::from_secs(60);

pub use qm_runtime::tokens::{generate as generate_token, hash as token_hash};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    Session(SessionId),
    ApiKey(ApiKeyId),
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    pub organization_id: OrganizationId,
    pub role: Role,
    /// The user behind a session, or the creator of an API key.
    pub user_id: Option<UserId>,
    /// Only a session of the bootstrap admin (never an API key) administers the platform.
    pub platform_admin: bool,
    pub credential: Credential,
    /// How long the credential stays valid (a session's remaining lifetime).
    pub expires_in: Duration,
    /// A session's account as read with the session (kept current on this replica by
    /// [`CredentialCache::refresh_account`]); `None` for API keys, which have no account.
    pub account: Option<std::sync::Arc<UserView>>,
}

impl Principal {
    /// # Errors
    /// 403 when the caller's role is below `role`.
    pub fn require(&self, role: Role) -> Result<(), Problem> {
        if self.role.allows(role) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!("this needs the `{role}` role; you have `{}`", self.role)))
        }
    }

    /// # Errors
    /// 403 unless the caller is the platform administrator.
    pub fn require_platform_admin(&self) -> Result<(), Problem> {
        if self.platform_admin { Ok(()) } else { Err(Problem::forbidden("this needs the platform administrator")) }
    }

    /// Whether the caller may see records of `organization`.
    pub fn sees(&self, organization: OrganizationId) -> bool {
        self.organization_id == organization
    }

    /// The session, when the caller used one.
    pub fn session(&self) -> Option<SessionId> {
        match self.credential {
            Credential::Session(id) => Some(id),
            Credential::ApiKey(_) => None,
        }
    }
}

/// The token of a request: `Authorization: Bearer …`, else the session cookie.
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok()) {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// How long a resolved credential is reused without asking the database again. Revocations on
/// this replica take effect at once (they evict); on other replicas within this time.
pub const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(5);
const CREDENTIAL_CACHE_CAPACITY: usize = 10_000;

/// Recently resolved credentials by token hash, so that a busy client costs one database
/// lookup per [`CREDENTIAL_CACHE_TTL`] instead of one per request. Every eviction is also
/// announced ([`CredentialCache::revocations`]), so open event streams re-check at once.
pub struct CredentialCache {
    entries: Mutex<HashMap<String, (Principal, Instant)>>,
    revocations: tokio::sync::watch::Sender<u64>,
}

impl Default for CredentialCache {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()), revocations: tokio::sync::watch::channel(0).0 }
    }
}

impl CredentialCache {
    fn get(&self, hash: &str) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(hash).filter(|(_, until)| Instant::now() < *until).map(|(principal, _)| principal.clone())
    }

    fn insert(&self, hash: String, principal: Principal) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= CREDENTIAL_CACHE_CAPACITY {
            let now = Instant::now();
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= CREDENTIAL_CACHE_CAPACITY {
                entries.clear();
            }
        }
        let until = Instant::now() + principal.expires_in.min(CREDENTIAL_CACHE_TTL);
        entries.insert(hash, (principal, until));
    }

    /// Forgets every cached credential matching `matches` (a revoked key, a user's sessions).
    pub fn evict(&self, matches: impl Fn(&Principal) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.retain(|_, (principal, _)| !matches(principal));
        drop(entries);
        self.revocations.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Replaces the account snapshot of `user`'s cached sessions after a change to the account
    /// that keeps them valid (names, email), so that the next `/auth/me` shows it.
    pub fn refresh_account(&self, user: &UserView) {
        let account = std::sync::Arc::new(user.clone());
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (principal, _) in entries.values_mut() {
            if principal.account.as_ref().is_some_and(|cached| cached.id == user.id) {
                principal.account = Some(account.clone());
            }
        }
    }

    /// Changes whenever a credential may have been revoked on this replica.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = presented_token(&parts.headers).ok_or_else(|| {
            Problem::unauthorized("log in (POST /auth/login) or send `Authorization: Bearer <token>`")
        })?;
        authenticate(state, &token).await
    }
}

/// The caller behind `token`, from the cache or the store.
///
/// # Errors
/// 401 when the token is unknown, expired or revoked; the store's errors.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, Problem> {
    let hash = token_hash(token);
    if let Some(principal) = state.credentials.get(&hash) {
        return Ok(principal);
    }
    let principal = resolve(state, token, &hash).await?;
    state.credentials.insert(hash, principal.clone());
    Ok(principal)
}

/// Looks the credential up in the store.
async fn resolve(state: &AppState, token: &str, hash: &str) -> Result<Principal, Problem> {
    let store = &state.dependencies.store;
    if token.starts_with(SESSION_TOKEN_PREFIX) {
        let now = qm_store::now();
        let (session, user) = store
            .live_session(hash, now)
            .await?
            .ok_or_else(|| Problem::unauthorized("the session has expired or was revoked; log in again"))?;
        return Ok(Principal {
            organization_id: user.organization_id,
            role: user.role,
            user_id: Some(user.id),
            platform_admin: user.is_platform_admin,
            credential: Credential::Session(session.id),
            expires_in: (session.expires_at - now).to_std().unwrap_or_default(),
            account: Some(std::sync::Arc::new(UserView::from(&user))),
        });
    }
    if token.starts_with(API_KEY_PREFIX) {
        let now = qm_store::now();
        let key = store
            .live_api_key(hash, now)
            .await?
            .ok_or_else(|| Problem::unauthorized("the API key is unknown, expired or revoked"))?;
        let remaining = key.expires_at.map_or(CREDENTIAL_CACHE_TTL, |expires_at| {
            (expires_at - now).to_std().unwrap_or_default().min(CREDENTIAL_CACHE_TTL)
        });
        if let Err(error) = store.touch_api_key(key.id, qm_store::now(), LAST_USED_GRANULARITY).await {
            tracing::warn!(%error, key = %key.id, "could not record the key's last use");
        }
        return Ok(Principal {
            organization_id: key.organization_id,
            role: key.role,
            user_id: key.created_by,
            platform_admin: false,
            credential: Credential::ApiKey(key.id),
            expires_in: remaining,
            account: None,
        });
    }
    Err(Problem::unauthorized("the token is not a Quartermaster session token or API key"))
}

/// The header a script sets on cookie-authenticated changes when the browser sends neither
/// `Origin` nor `Sec-Fetch-Site` (a custom header cannot be sent cross-site without a CORS
/// preflight, which this API never grants).
pub const CSRF_HEADER: &str = "x-qm-csrf";

/// Refuses cross-site requests that ride on the session cookie: a change (any method but GET,
/// HEAD and OPTIONS) authenticated by the cookie alone must come from this site, as
/// `Sec-Fetch-Site: same-origin`, an `Origin` equal to the request's host, or the
/// [`CSRF_HEADER`]. Bearer tokens are not sent by browsers on their own and are unaffected.
pub async fn cross_site_guard(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let safe =
        matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS);
    let headers = request.headers();
    let by_cookie = headers.get(axum::http::header::AUTHORIZATION).is_none() && presented_token(headers).is_some();
    if safe || !by_cookie || same_site(headers) {
        return next.run(request).await;
    }
    Problem::forbidden(
        "a change authenticated by the session cookie must come from this site (Origin or Sec-Fetch-Site), \
         or carry the X-QM-CSRF header; programs should send a bearer token",
    )
    .into_response()
}

/// Whether the request says it comes from this site.
fn same_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
    if let Some(site) = text("sec-fetch-site") {
        return site.eq_ignore_ascii_case("same-origin");
    }
    if let Some(origin) = text("origin") {
        let host = text("host").unwrap_or_default();
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        return !host.is_empty() && origin_host.eq_ignore_ascii_case(host);
    }
    headers.contains_key(CSRF_HEADER)
}

/// The caller's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For` (read right to left, since each proxy appends).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpBlock]) -> IpAddr {
    let is_trusted = |address: IpAddr| trusted.iter().any(|block| block.contains(address));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    forwarded.iter().rev().copied().find(|address| !is_trusted(*address)).or(forwarded.first().copied()).unwrap_or(peer)
}

/// The caller's address as an extractor.
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |ConnectInfo(address)| address.ip());
        Ok(Self(client_address(peer, &parts.headers, &state.dependencies.settings.trusted_proxies)))
    }
}

/// Failed logins per key (a client address or an account) in a sliding window. Kept in memory:
/// each API replica limits on its own (documented in docs/decisions.md).
///
/// An attempt *reserves* its failure before the password is checked, so concurrent guesses
/// cannot all pass the check before any of them is counted: 50 wrong passwords sent at once for
/// one account get through at most the limit. A success gives the reservation back.
pub struct LoginLimiter {
    window: Duration,
    per_client: usize,
    per_account: usize,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Past this many tracked keys, stale ones are swept on the next attempt.
const SWEEP_THRESHOLD: usize = 10_000;
/// Past this many live keys (after a sweep), attempts for new keys are refused until keys age
/// out: memory stays bounded whatever an attacker sends.
const MAX_KEYS: usize = 200_000;

/// What a login is counted against: the client's address and the account it resolves to.
#[derive(Clone, Debug)]
pub struct Attempt {
    client: String,
    account: String,
}

impl Attempt {
    /// `account`: the resolved user's id (username and email of one account count together),
    /// or the normalised login text when it names nobody.
    pub fn new(client: IpAddr, account: &str) -> Self {
        Self { client: format!("client:{client}"), account: format!("account:{}", account.trim().to_lowercase()) }
    }
}

/// A reserved attempt: counted as a failure unless [`LoginLimiter::succeeded`] gives it back.
#[must_use]
pub struct Reservation {
    attempt: Attempt,
    at: Instant,
}

impl LoginLimiter {
    pub fn new(window: Duration, per_client: usize, per_account: usize) -> Self {
        Self { window, per_client, per_account, failures: Mutex::new(HashMap::new()) }
    }

    /// Reserves one attempt, or `Err(seconds to wait)` when the client or the account has used
    /// up its failures (reserved attempts included).
    pub fn reserve(&self, attempt: &Attempt) -> Result<Reservation, u64> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() > SWEEP_THRESHOLD {
            failures.retain(|_, times| times.back().is_some_and(|time| now.duration_since(*time) < self.window));
        }
        let mut wait = None;
        for (key, limit) in [(&attempt.client, self.per_client), (&attempt.account, self.per_account)] {
            let Some(times) = failures.get_mut(key) else {
                if failures.len() >= MAX_KEYS {
                    wait = Some(self.window.as_secs());
                }
                continue;
            };
            while times.front().is_some_and(|time| now.duration_since(*time) >= self.window) {
                times.pop_front();
            }
            if times.len() >= limit
                && let Some(oldest) = times.front()
            {
                let seconds = self.window.saturating_sub(now.duration_since(*oldest)).as_secs() + 1;
                wait = Some(wait.map_or(seconds, |other: u64| other.max(seconds)));
            }
        }
        if let Some(seconds) = wait {
            return Err(seconds);
        }
        for key in [&attempt.client, &attempt.account] {
            failures.entry(key.clone()).or_default().push_back(now);
        }
        Ok(Reservation { attempt: attempt.clone(), at: now })
    }

    /// The password was right: the reservation is given back and the account's failures are
    /// cleared (the client's stay).
    pub fn succeeded(&self, reservation: Reservation) {
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.remove(&reservation.attempt.account);
        if let Some(times) = failures.get_mut(&reservation.attempt.client)
            && let Some(position) = times.iter().rposition(|time| *time == reservation.at)
        {
            times.remove(position);
        }
    }

    /// Keys tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().expect("header"));
        let trusted = vec![IpBlock::parse("10.0.0.0/8").expect("block")];
        assert_eq!(client_address(ip("198.51.100.1"), &headers, &trusted), ip("198.51.100.1"));
        assert_eq!(client_address(ip("10.0.0.1"), &headers, &trusted), ip("203.0.113.9"));
        assert_eq!(client_address(ip("10.0.0.1"), &headers, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn a_spoofed_leftmost_entry_does_not_win() {
        let mut headers = HeaderMap::new();
        // The client wrote the first entry itself; the proxy appended the real address.
        headers.insert("x-forwarded-for", "1.2.3.4, 203.0.113.9".parse().expect("header"));
        let trusted = vec![IpBlock::parse("10.0.0.1").expect("block")];
        assert_eq!(client_address(ip("10.0.0.1"), &headers, &trusted), ip("203.0.113.9"));
    }

    #[test]
    fn the_limiter_locks_an_account_after_repeated_failures_and_tells_how_long() {
        let limiter = LoginLimiter::new(Duration::from_secs(60), 100, 3);
        let client = ip("192.0.2.1");
        for _ in 0..3 {
            let _failed = limiter.reserve(&Attempt::new(client, "alice")).expect("allowed");
        }
        let Err(wait) = limiter.reserve(&Attempt::new(client, "Alice")) else { panic!("locked") };
        assert!((1..=61).contains(&wait), "{wait}");
        assert!(limiter.reserve(&Attempt::new(client, "bob")).is_ok(), "another account is not affected");
    }

    #[test]
    fn the_limiter_locks_a_client_that_tries_many_accounts() {
        let limiter = LoginLimiter::new(Duration::from_secs(60), 2, 100);
        let client = ip("192.0.2.2");
        let _a = limiter.reserve(&Attempt::new(client, "a")).expect("allowed");
        let _b = limiter.reserve(&Attempt::new(client, "b")).expect("allowed");
        assert!(limiter.reserve(&Attempt::new(client, "c")).is_err());
        assert!(limiter.reserve(&Attempt::new(ip("192.0.2.3"), "c")).is_ok());
    }

    #[test]
    fn a_success_gives_its_reservation_back() {
        let limiter = LoginLimiter::new(Duration::from_secs(60), 2, 2);
        let client = ip("192.0.2.4");
        for _ in 0..5 {
            let reservation = limiter.reserve(&Attempt::new(client, "carol")).expect("allowed");
            limiter.succeeded(reservation);
        }
        assert_eq!(limiter.tracked(), 1, "only the client's (empty) entry stays");
    }

    #[test]
    fn tokens_are_long_random_and_hashed_stably() {
        let token = generate_token(API_KEY_PREFIX);
        assert!(token.starts_with("qm_") && token.len() == 46, "{token}");
        assert_ne!(token, generate_token(API_KEY_PREFIX));
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
