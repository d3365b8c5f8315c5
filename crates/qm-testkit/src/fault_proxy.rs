//! A small HTTP proxy in front of an EC2 endpoint (moto) that injects what moto cannot produce:
//! `InsufficientInstanceCapacity` for `RunInstances` in chosen zones, `RequestLimitExceeded`
//! throttling, and a `RunInstances` whose answer is lost after the instance was created (the
//! client sees a 503, as after a timeout). Errors use EC2's XML error shape. It records the
//! `Action` of every request it sees.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(Default)]
struct Rules {
    capacity_zones: BTreeSet<String>,
    throttle: u32,
    lose_next_run: bool,
    actions: Vec<String>,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Rules>,
}

pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn ec2_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        uuid::Uuid::new_v4()
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

/// The form field `name` of an EC2 query body.
fn field<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    let action = field(&text, "Action").unwrap_or_default().to_owned();
    let lose_answer = {
        let mut rules = shared.rules.lock().unwrap_or_else(PoisonError::into_inner);
        rules.actions.push(action.clone());
        if rules.throttle > 0 {
            rules.throttle -= 1;
            return ec2_error(StatusCode::SERVICE_UNAVAILABLE, "RequestLimitExceeded", "Request limit exceeded.");
        }
        if action == "RunInstances" {
            let zone = field(&text, "Placement.AvailabilityZone").unwrap_or_default();
            if rules.capacity_zones.contains(zone) {
                return ec2_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InsufficientInstanceCapacity",
                    "We currently do not have sufficient capacity in the Availability Zone you requested.",
                );
            }
        }
        let lose = action == "RunInstances" && rules.lose_next_run;
        if lose {
            rules.lose_next_run = false;
        }
        lose
    };
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let mut request = shared.client.request(method, format!("{}{path}", shared.upstream)).body(body.to_vec());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(error) => return ec2_error(StatusCode::BAD_GATEWAY, "InternalError", &error.to_string()),
    };
    if lose_answer {
        return ec2_error(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "The answer was lost (simulated timeout).");
    }
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type =
        answer.headers().get("content-type").and_then(|value| value.to_str().ok()).unwrap_or("text/xml").to_owned();
    let bytes = answer.bytes().await.unwrap_or_default();
    (status, [("content-type", content_type)], bytes).into_response()
}

impl FaultProxy {
    /// Proxies to `upstream` from a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(upstream: &str) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: crate::http_client(),
            rules: Mutex::new(Rules::default()),
        });
        let router = Router::new().fallback(forward).with_state(shared.clone());
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|error| panic!("bind: {error}"));
        let address = listener.local_addr().unwrap_or_else(|error| panic!("address: {error}"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { address, shared, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.shared.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `RunInstances` in `zone` answers `InsufficientInstanceCapacity` from now on.
    pub fn no_capacity_in(&self, zone: &str) {
        self.rules().capacity_zones.insert(zone.to_owned());
    }

    /// The next `count` requests answer `RequestLimitExceeded`.
    pub fn throttle_next(&self, count: u32) {
        self.rules().throttle = count;
    }

    /// The next `RunInstances` reaches moto (the instance exists) but its answer is lost.
    pub fn lose_next_run_answer(&self) {
        self.rules().lose_next_run = true;
    }

    /// The `Action` of every request so far.
    pub fn actions(&self) -> Vec<String> {
        self.rules().actions.clone()
    }
}
