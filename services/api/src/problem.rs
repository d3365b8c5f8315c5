//! Errors as RFC 9457 `application/problem+json`, and the extractors that turn every malformed
//! request (body, query string, path) into one instead of axum's plain-text rejections.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use qm_store::StoreError;
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field, in the request's own terms (`zone`, `failover[1].instance_type`, `limit`).
    pub field: String,
    pub message: String,
}

/// A problem detail (RFC 9457).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `urn:qm:problem:validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For `urn:qm:problem:budget-exceeded`: the budget and the projected spend.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub budget: Option<Box<serde_json::Value>>,
    #[serde(skip)]
    retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:qm:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            budget: None,
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// `what` does not exist, or belongs to another organization (the two are not told apart).
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", format!("{what} not found"))
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// A request that parsed but is not acceptable; `field` names what to fix.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::invalid_fields(vec![FieldError { field: field.to_owned(), message: message.into() }])
    }

    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        let detail =
            errors.iter().map(|error| format!("{}: {}", error.field, error.message)).collect::<Vec<_>>().join("; ");
        Self { errors, ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", detail) }
    }

    pub fn too_many_requests(detail: impl Into<String>, retry_after_seconds: u64) -> Self {
        Self {
            retry_after: Some(u32::try_from(retry_after_seconds.max(1)).unwrap_or(u32::MAX)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail)
        }
    }

    /// 402: a hard-capped budget refuses more spending.
    pub fn budget_exceeded(detail: impl Into<String>, budget: serde_json::Value) -> Self {
        Self { budget: Some(Box::new(budget)), ..Self::new(StatusCode::PAYMENT_REQUIRED, "budget-exceeded", detail) }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self { retry_after: Some(5), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail) }
    }

    /// A server fault: logged in full, answered without internals.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle the request; it has been logged",
        )
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], body).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { field } => {
                let mut problem = Problem::conflict(format!("`{field}` is already taken"));
                problem.errors.push(FieldError { field, message: "already taken".into() });
                problem
            }
            StoreError::MissingReference => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "the request refers to a record that does not exist",
            ),
            StoreError::Unavailable(_) => {
                tracing::warn!(%error, "database unavailable");
                Problem::unavailable("the database is unavailable; try again shortly")
            }
            StoreError::IllegalTransition(error) => Problem::conflict(error.to_string()),
            other => Problem::internal(&other),
        }
    }
}

pub type ApiResult<T> = Result<T, Problem>;

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let kind = match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
            StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
            StatusCode::UNPROCESSABLE_ENTITY => "validation",
            _ => "malformed-body",
        };
        Problem::new(status, kind, rejection.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad-query", rejection.body_text())
    }
}

/// A path whose id does not parse names no resource: 404, as an id that parses but matches
/// nothing (decision 71).
impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", rejection.body_text())
    }
}

/// A JSON body; a malformed one is a problem+json 400/413/415/422 naming what was wrong. Text
/// with NUL characters is refused here, since no database column can hold them.
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type =
            request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| Problem::new(rejection.status(), "malformed-body", rejection.body_text()))?;
        read_json(&bytes).map(Json)
    }
}

/// A JSON body read strictly: NUL characters refused (400, no database column can hold them),
/// malformed JSON 400, the wrong shape 422 naming the field; a whole-number float (`3.0`)
/// counts as the integer it equals.
fn read_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if contains_escaped_nul(bytes) {
        return Err(Problem::bad_request("text must not contain NUL characters (\\u0000)"));
    }
    match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(value)) => Ok(value),
        Err(rejection) => integral_floats_as_integers(bytes).ok_or_else(|| Problem::from(rejection)),
    }
}

/// `bytes` read again with every whole-number float (`3.0`) as the integer it equals, which
/// JSON Schema counts as an `integer` but serde refuses for integer fields; `None` when that
/// does not help either. Only tried after the strict reading failed.
fn integral_floats_as_integers<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    fn normalize(value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::Number(number) if number.is_f64() => {
                // Exactly representable whole numbers only (|x| < 2^53).
                let float = number.as_f64().unwrap_or(f64::NAN);
                if float.fract() != 0.0 || float.abs() >= 9_007_199_254_740_992.0 {
                    return false;
                }
                *value = serde_json::Value::from(float as i64);
                true
            }
            serde_json::Value::Array(items) => items.iter_mut().fold(false, |changed, item| normalize(item) | changed),
            serde_json::Value::Object(fields) => {
                fields.values_mut().fold(false, |changed, field| normalize(field) | changed)
            }
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if !normalize(&mut value) {
        return None;
    }
    serde_json::from_value(value).ok()
}

/// Whether JSON text holds a `\u0000` escape (a raw NUL byte is not valid JSON at all).
fn contains_escaped_nul(bytes: &[u8]) -> bool {
    bytes.windows(6).enumerate().any(|(start, window)| {
        window.eq_ignore_ascii_case(b"\\u0000")
            && bytes[..start].iter().rev().take_while(|byte| **byte == b'\\').count() % 2 == 0
    })
}

/// Refuses NUL characters in the path or query string (`%00`) before any handler runs.
pub async fn refuse_nul(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri = request.uri().to_string().to_ascii_lowercase();
    if uri.contains("%00") {
        return Problem::bad_request("the URL must not contain NUL characters (%00)").into_response();
    }
    next.run(request).await
}

/// Where a JSON answer starts: big enough for most single objects, so that a page only grows
/// its buffer a few times.
const JSON_BODY_CAPACITY: usize = 4096;

impl<T: Serialize> IntoResponse for Json<T> {
    /// Serialized into a `Vec` (axum's own `Json` writes through a `BytesMut` starting at 128
    /// bytes, which cost a 50-instance page 8 % of its CPU in copies and zeroing).
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(JSON_BODY_CAPACITY);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => json_response(body),
            Err(error) => Problem::internal(&error).into_response(),
        }
    }
}

/// A 200 answer of JSON already written.
pub fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub struct Query<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Path<T>(pub T);

/// An optional JSON body: empty (or `null`) means `None`.
///
/// # Errors
/// 400 for malformed JSON, 422 for JSON of the wrong shape.
pub fn optional_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Option<T>, Problem> {
    let body = body.trim_ascii();
    if body.is_empty() || body == b"null" {
        return Ok(None);
    }
    read_json(body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::contains_escaped_nul;

    #[test]
    fn nul_escapes_are_found_but_escaped_backslashes_are_not_mistaken_for_them() {
        assert!(contains_escaped_nul(br#"{"model":"a\u0000b"}"#));
        assert!(contains_escaped_nul(br#"{"model":"\\\u0000"}"#));
        assert!(!contains_escaped_nul(br#"{"model":"a\\u0000b"}"#));
        assert!(!contains_escaped_nul(br#"{"model":"u0000"}"#));
    }

    #[test]
    fn whole_number_floats_count_as_integers_and_fractions_do_not() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Counts {
            count: i64,
            nested: Vec<u32>,
        }
        let read = super::integral_floats_as_integers::<Counts>(br#"{"count":-366.0,"nested":[11.0,2]}"#);
        assert_eq!(read, Some(Counts { count: -366, nested: vec![11, 2] }));
        assert_eq!(super::integral_floats_as_integers::<Counts>(br#"{"count":1.5,"nested":[]}"#), None);
        assert_eq!(super::integral_floats_as_integers::<Counts>(br#"{"count":1e300,"nested":[]}"#), None);
    }
}
