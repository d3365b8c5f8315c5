//! Stand-ins for the outside world, for tests only: [`scaleway::FakeScaleway`], a fake of
//! Scaleway's Instance API v1 (`docs/providers.md` lists the shapes it follows);
//! [`moto::Moto`], moto's EC2 server on a free port; [`fault_proxy::FaultProxy`], which injects
//! the EC2 errors moto cannot produce.

pub mod cloud_init;
pub mod fault_proxy;
pub mod load;
pub mod moto;
pub mod prometheus;
pub mod scaleway;

/// An HTTP client (reqwest is built without a default TLS crypto provider).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Logs in to the api at `base` as `login` and returns the session token.
///
/// # Panics
/// When the api refuses or answers without a token: a test or benchmark cannot go on.
pub async fn login(client: &reqwest::Client, base: &str, login: &str, password: &str) -> String {
    let response = client
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({ "login": login, "password": password }))
        .send()
        .await
        .unwrap_or_else(|error| panic!("cannot reach {base}: {error}"));
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["token"].as_str().unwrap_or_else(|| panic!("login refused: {body}")).to_owned()
}
