//! Stand-ins for the outside world, for tests only: [`scaleway::FakeScaleway`], a fake of
//! Scaleway's Instance API v1 (`docs/providers.md` lists the shapes it follows);
//! [`moto::Moto`], moto's EC2 server on a free port; [`fault_proxy::FaultProxy`], which injects
//! the EC2 errors moto cannot produce.

pub mod fault_proxy;
pub mod moto;
pub mod scaleway;

/// An HTTP client (reqwest is built without a default TLS crypto provider).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
