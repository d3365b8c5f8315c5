//! The api over HTTP: JSON in and out, a problem detail turned into one line naming what was
//! wrong (with the request id under `--verbose`), and the token never printed.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::{Failure, Outcome};

pub struct Api {
    http: reqwest::Client,
    pub base: String,
    token: Option<String>,
    verbose: bool,
}

/// A failed request as one line: the API's problem detail and the fields it names.
fn problem_line(status: reqwest::StatusCode, body: &str) -> String {
    let Ok(problem) = serde_json::from_str::<Value>(body) else {
        let text = body.trim();
        let text = if text.is_empty() { status.canonical_reason().unwrap_or("error") } else { text };
        return format!("HTTP {}: {}", status.as_u16(), text.lines().next().unwrap_or(text));
    };
    // The router's OpenAI shape, or RFC 9457.
    let detail = problem["detail"]
        .as_str()
        .or_else(|| problem["error"]["message"].as_str())
        .or_else(|| problem["title"].as_str())
        .unwrap_or("error");
    let fields: Vec<String> = problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    format!("{}: {}", error["field"].as_str().unwrap_or("?"), error["message"].as_str().unwrap_or(""))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut line = format!("{detail} (HTTP {})", status.as_u16());
    if !fields.is_empty() && !fields.iter().all(|field| detail.contains(field.as_str())) {
        line = format!("{}: {line}", fields.join("; "));
    }
    line.replace('\n', " ")
}

impl Api {
    pub fn new(base: &str, token: Option<String>, verbose: bool) -> Outcome<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!("the API URL must start with http:// or https://, got `{base}`")));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("qm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Failure::Request(format!("cannot build an HTTP client: {error}")))?;
        Ok(Self { http, base, token, verbose })
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Sends `request` and reads its JSON answer (`null` for an empty one).
    pub async fn call(&self, request: reqwest::RequestBuilder) -> Outcome<Value> {
        let request = request.timeout(Duration::from_secs(60));
        let response = request.send().await.map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        let request_id =
            response.headers().get("x-request-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let body = response.text().await.map_err(|error| Failure::Request(format!("the answer was cut: {error}")))?;
        if !status.is_success() {
            let mut line = problem_line(status, &body);
            if status == reqwest::StatusCode::UNAUTHORIZED && !self.has_token() {
                line.push_str("; run `qm login` first");
            }
            if self.verbose
                && let Some(id) = request_id
            {
                line.push_str(&format!(" [request id {id}]"));
            }
            return Err(Failure::Request(line));
        }
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body)
            .map_err(|error| Failure::Request(format!("the API answered something that is not JSON: {error}")))
    }

    pub async fn get(&self, path: &str) -> Outcome<Value> {
        self.call(self.request(Method::GET, path)).await
    }

    pub async fn send(&self, method: Method, path: &str, body: &Value) -> Outcome<Value> {
        self.call(self.request(method, path).json(body)).await
    }

    pub fn unreachable(&self, error: &reqwest::Error) -> Failure {
        let what = if error.is_timeout() { "did not answer in time" } else { "cannot be reached" };
        Failure::Request(format!("the API at {} {what}; is Quartermaster running (`make dev`)?", self.base))
    }

    /// Every item of a paged listing (`items` and `next_cursor`), up to `limit`.
    pub async fn all(&self, path: &str, limit: usize) -> Outcome<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let separator = if path.contains('?') { '&' } else { '?' };
        loop {
            let page_size = (limit - items.len()).clamp(1, 500);
            let mut url = format!("{path}{separator}limit={page_size}");
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let page = self.get(&url).await?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) if items.len() < limit => cursor = Some(next.to_owned()),
                _ => return Ok(items),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_one_line_naming_the_field() {
        let body = r#"{"type":"urn:qm:problem:validation","title":"Invalid request","status":422,
            "detail":"the request is invalid","errors":[{"field":"zone","message":"unknown zone `nowhere`"}]}"#;
        assert_eq!(
            problem_line(reqwest::StatusCode::UNPROCESSABLE_ENTITY, body),
            "zone: unknown zone `nowhere`: the request is invalid (HTTP 422)"
        );
        let openai = r#"{"error":{"message":"no such model","type":"invalid_request_error"}}"#;
        assert_eq!(problem_line(reqwest::StatusCode::NOT_FOUND, openai), "no such model (HTTP 404)");
        assert_eq!(problem_line(reqwest::StatusCode::BAD_GATEWAY, "bad\ngateway"), "HTTP 502: bad");
    }
}
