//! One trace over OTLP: `qm dev` exports its spans (OTLP over HTTP, protobuf) to a collector this
//! test runs; a deployment sent with a `traceparent` yields, in that one trace, the api's
//! `http_request` span (a child of the caller's span), the orchestrator's `handle_message` span
//! for the `instance.provision` command it took off the bus (a descendant of the api's span), and
//! the `provider_call` span of the provider's `create` (a descendant of the handler's span).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;
use support::{Dev, Session, temporary_data_dir};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

type Spans = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP collector: each POST body is an `ExportTraceServiceRequest`, answered with an
/// empty (valid) response; connections are kept alive as the exporter expects.
async fn collector() -> (String, Spans) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let spans: Spans = Arc::default();
    let collected = spans.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(receive(socket, collected.clone()));
        }
    });
    (endpoint, spans)
}

async fn receive(mut socket: tokio::net::TcpStream, spans: Spans) {
    let mut buffer = Vec::new();
    loop {
        let header_end = loop {
            if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break at + 4;
            }
            if socket.read_buf(&mut buffer).await.unwrap_or(0) == 0 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < header_end + length {
            if socket.read_buf(&mut buffer).await.unwrap_or(0) == 0 {
                return;
            }
        }
        let body: Vec<u8> = buffer.drain(..header_end + length).skip(header_end).collect();
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP trace export");
        let exported =
            request.resource_spans.into_iter().flat_map(|resource| resource.scope_spans).flat_map(|scope| scope.spans);
        spans.lock().expect("spans").extend(exported);
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if socket.write_all(answer).await.is_err() {
            return;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|attribute| attribute.key == key).and_then(|attribute| {
        match attribute.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(text) => Some(text.clone()),
            other => Some(format!("{other:?}")),
        }
    })
}

/// Whether `ancestor` is `span`'s parent, or its parent's, and so on.
fn descends(spans: &HashMap<String, &Span>, span: &Span, ancestor: &Span) -> bool {
    let mut parent = hex(&span.parent_span_id);
    while let Some(next) = spans.get(&parent) {
        if next.span_id == ancestor.span_id {
            return true;
        }
        parent = hex(&next.parent_span_id);
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_deployment_from_the_api_through_the_bus_to_the_provider_call() {
    let (endpoint, spans) = collector().await;
    let data_dir = temporary_data_dir();
    let variables = [
        ("QM_ADMIN_PASSWORD", "traces-password"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let (dev, urls, _) = Dev::start_with(&data_dir, &[], &variables);
    let session = Session::login(&urls["api"], "traces-password").await;
    let response = session
        .client
        .post(format!("{}/deployments", urls["api"]))
        .bearer_auth(&session.token)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({ "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" }))
        .send()
        .await
        .expect("deploy");
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.expect("json");
    let id = accepted["instance_ids"][0].as_str().expect("instance").to_owned();
    session.until(&format!("/instances/{id}"), |instance| instance["state"] == "ready", Duration::from_secs(30)).await;
    // Stopping flushes what the batch exporter holds.
    assert!(dev.terminate(Duration::from_secs(20)).success());

    let deadline = Instant::now() + Duration::from_secs(10);
    let traced: Vec<Span> = loop {
        let traced: Vec<Span> =
            spans.lock().expect("spans").iter().filter(|span| hex(&span.trace_id) == TRACE).cloned().collect();
        let complete = traced.iter().any(|span| span.name == "provider_call");
        if complete || Instant::now() > deadline {
            break traced;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_id: HashMap<String, &Span> = traced.iter().map(|span| (hex(&span.span_id), span)).collect();
    let names: Vec<(String, Option<String>)> =
        traced.iter().map(|span| (span.name.clone(), attribute(span, "message_type"))).collect();
    let api = traced
        .iter()
        .find(|span| span.name == "http_request" && attribute(span, "route").as_deref() == Some("/deployments"))
        .unwrap_or_else(|| panic!("the api's span for POST /deployments, among {names:?}"));
    assert_eq!(hex(&api.parent_span_id), CALLER_SPAN, "the api's span continues the caller's");
    let handler = traced
        .iter()
        .find(|span| {
            span.name == "handle_message" && attribute(span, "message_type").as_deref() == Some("instance.provision")
        })
        .unwrap_or_else(|| panic!("the orchestrator's span for instance.provision, among {names:?}"));
    assert!(descends(&by_id, handler, api), "the command's handler descends from the api's request");
    let call = traced
        .iter()
        .find(|span| span.name == "provider_call" && attribute(span, "operation").as_deref() == Some("create"))
        .unwrap_or_else(|| panic!("the provider's create call, among {names:?}"));
    assert_eq!(attribute(call, "provider").as_deref(), Some("sim"));
    assert!(descends(&by_id, call, handler), "the provider call descends from the command's handler");
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
