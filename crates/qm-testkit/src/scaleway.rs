//! A fake of Scaleway's Instance API v1, for tests, following the published shapes and the
//! behaviours `docs/providers.md` lists with their sources: servers (list with filters, by
//! project too, and pagination, create, get, delete, actions, user data), flexible IPs, server
//! types with hourly prices and their availability (paged); `X-Auth-Token` checked; errors as
//! `{"type", "message"}`, and a plain 404 (no resource type) for a route the API does not have.
//! It records every request it receives (without the token), keeps the Block Storage
//! (`sbs_volume`) volumes servers boot from (detached, not deleted, by `terminate` and by
//! `DELETE`, in the background: they stay `in_use` for [`FakeScaleway::detach_after`]), listed
//! with `page`/`page_size` and `total_count`. It can be told to be out of stock for a type in a
//! zone at create or only at poweron (refused, or accepted then back to `stopped`), to cap page
//! sizes, to answer 429 or 503 to the next requests, or 503 to the next user-data calls. State
//! changes like the real API's: a new server is `stopped`; `poweron` makes it `starting`, and the
//! next read finds it `running` with a routed public IP and no private IP; `terminate` removes
//! it (a later `GET` is a 404).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

/// `(code, hourly EUR, GPUs, GPU name, GPU memory GiB, vCPUs, RAM GiB, zones offering it; empty = all)`.
type Product = (&'static str, f64, u64, Option<&'static str>, u64, u64, u64, &'static [&'static str]);

/// Types and list prices as published (EUR per hour).
pub const PRODUCTS: [Product; 8] = [
    ("DEV1-S", 0.0088, 0, None, 0, 2, 2, &[]),
    ("RENDER-S", 1.2212, 1, Some("P100"), 16, 10, 42, &["fr-par-1"]),
    ("L4-1-24G", 0.75, 1, Some("L4"), 24, 8, 48, &[]),
    ("L4-2-24G", 1.5, 2, Some("L4"), 24, 16, 96, &[]),
    ("L4-4-24G", 3.0, 4, Some("L4"), 24, 32, 192, &[]),
    ("L40S-1-48G", 1.4, 1, Some("L40S"), 48, 8, 96, &["fr-par-2"]),
    ("H100-1-80G", 2.73, 1, Some("H100"), 80, 24, 240, &["fr-par-2"]),
    ("H100-SXM-8-80G", 23.028, 8, Some("H100"), 80, 128, 960, &["fr-par-2"]),
];

const GIB: u64 = 1 << 30;

/// One request as the fake received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
}

#[derive(Default)]
struct World {
    secret: String,
    /// By (zone, id).
    servers: BTreeMap<(String, String), Value>,
    ips: BTreeMap<(String, String), Value>,
    /// Block Storage (`sbs_volume`) volumes, by (zone, id).
    volumes: BTreeMap<(String, String), Value>,
    user_data: BTreeMap<(String, String), String>,
    requests: Vec<Recorded>,
    out_of_stock: BTreeSet<(String, String)>,
    /// (zone, type) whose poweron fails for stock, and how.
    failing_starts: BTreeMap<(String, String), StartFailure>,
    /// Volumes detaching in the background, by (zone, id): when they become `available`.
    detaching: BTreeMap<(String, String), std::time::Instant>,
    detach_after: std::time::Duration,
    /// The largest page served (`per_page` / `page_size`), 100 as the real API.
    page_limit: usize,
    throttle: u32,
    unavailable: u32,
    failing_user_data: u32,
    counter: u64,
}

/// How a poweron fails for lack of stock (the exact behaviour is undocumented; both are seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFailure {
    /// The action answers `out_of_stock`; the server stays `stopped`.
    Refused,
    /// The action is accepted, and the server is found `stopped` again at the next read.
    FallsBack,
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> std::sync::MutexGuard<'_, World> {
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct FakeScaleway {
    address: SocketAddr,
    world: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeScaleway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn problem(status: StatusCode, kind: &str, message: &str, extra: Value) -> Response {
    let mut body = json!({ "type": kind, "message": message });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    (status, axum::Json(body)).into_response()
}

fn not_found(resource: &str, id: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not_found",
        "resource is not found",
        json!({ "resource": resource, "resource_id": id }),
    )
}

fn invalid(argument: &str, reason: &str) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid_arguments",
        "invalid argument(s)",
        json!({ "details": [{ "argument_name": argument, "reason": reason, "help_message": reason }] }),
    )
}

fn offered(zone: &str, product: &Product) -> bool {
    product.7.is_empty() || product.7.contains(&zone)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Every request passes here first: recorded, authenticated, and maybe throttled.
async fn gate(State(world): State<Shared>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    {
        let mut world = lock(&world);
        world.requests.push(Recorded {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().unwrap_or_default().to_owned(),
        });
        let token = request.headers().get("x-auth-token").and_then(|value| value.to_str().ok());
        if token != Some(world.secret.as_str()) {
            return problem(
                StatusCode::UNAUTHORIZED,
                "denied_authentication",
                "invalid or missing X-Auth-Token",
                json!({}),
            );
        }
        if world.throttle > 0 {
            world.throttle -= 1;
            return problem(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "rate limit exceeded", json!({}));
        }
        if world.unavailable > 0 {
            world.unavailable -= 1;
            return problem(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "try again later", json!({}));
        }
    }
    next.run(request).await
}

/// The page `query` asks for (`page` from 1, its size in `size_parameter`, 50 by default, at most
/// `limit`) of `items`, and that size.
fn slice<T>(items: Vec<T>, query: &BTreeMap<String, String>, size_parameter: &str, limit: usize) -> (Vec<T>, usize) {
    let number = |name: &str| query.get(name).and_then(|value| value.parse::<usize>().ok());
    let size = number(size_parameter).unwrap_or(50).clamp(1, limit);
    let page = number("page").unwrap_or(1).max(1);
    (items.into_iter().skip((page - 1).saturating_mul(size)).take(size).collect(), size)
}

fn page(items: Vec<Value>, query: &BTreeMap<String, String>, uri: &Uri, field: &str, limit: usize) -> Response {
    let total = items.len();
    let (slice, per_page) = slice(items, query, "per_page", limit);
    let last = total.div_ceil(per_page).max(1);
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", axum::http::HeaderValue::from(total));
    let link = format!("<{}?page={}&per_page={per_page}>; rel=\"last\"", uri.path(), last);
    if let Ok(value) = link.parse() {
        headers.insert("link", value);
    }
    (StatusCode::OK, headers, axum::Json(json!({ field: slice }))).into_response()
}

/// A `starting` server is `running` by the time anyone looks again (or `stopped`, when its
/// start fails for stock), with a routed public IP and, as routed-IP servers have, no private IP.
fn settle(server: &mut Value, counter: u64) {
    if server["state"] == "starting" && server["state_detail"] == "allocating node (no stock)" {
        server["state"] = json!("stopped");
        server["state_detail"] = json!("out of stock: could not allocate a node");
        server["allowed_actions"] = json!(["poweron", "backup"]);
        return;
    }
    if server["state"] == "starting" {
        server["state"] = json!("running");
        server["state_detail"] = json!("booting kernel");
        server["allowed_actions"] = json!(["poweroff", "terminate", "reboot", "stop_in_place", "backup"]);
        if server["dynamic_ip_required"] == true && server["public_ip"].is_null() {
            let ip = json!({ "id": uuid::Uuid::new_v4(), "address": format!("51.15.{}.{}", counter / 250 % 250, counter % 250 + 1),
                "dynamic": true, "family": "inet", "provisioning_mode": "dhcp" });
            server["public_ip"] = ip.clone();
            server["public_ips"] = json!([ip]);
        }
        server["private_ip"] = Value::Null;
    }
}

async fn list_servers(
    State(world): State<Shared>,
    Path(zone): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    uri: Uri,
) -> Response {
    let mut world = lock(&world);
    let (counter, limit) = (world.counter, world.page_limit);
    let wanted_tags: Vec<String> =
        query.get("tags").map(|tags| tags.split(',').map(str::to_owned).collect()).unwrap_or_default();
    let servers: Vec<Value> = world
        .servers
        .iter_mut()
        .filter(|((server_zone, _), _)| *server_zone == zone)
        .map(|(_, server)| {
            settle(server, counter);
            server.clone()
        })
        .filter(|server| {
            query.get("name").is_none_or(|name| server["name"].as_str().is_some_and(|own| own.contains(name.as_str())))
        })
        .filter(|server| query.get("commercial_type").is_none_or(|kind| server["commercial_type"] == kind.as_str()))
        .filter(|server| query.get("state").is_none_or(|state| server["state"] == state.as_str()))
        .filter(|server| query.get("project").is_none_or(|project| server["project"] == project.as_str()))
        .filter(|server| {
            let tags = server["tags"].as_array().cloned().unwrap_or_default();
            wanted_tags.iter().all(|wanted| tags.iter().any(|tag| tag == wanted.as_str()))
        })
        .collect();
    page(servers, &query, &uri, "servers", limit)
}

async fn create_server(State(world): State<Shared>, Path(zone): Path<String>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else { return invalid("body", "is not JSON") };
    let Some(name) = request["name"].as_str() else { return invalid("name", "required") };
    let Some(kind) = request["commercial_type"].as_str() else { return invalid("commercial_type", "required") };
    if request["image"].as_str().is_none_or(str::is_empty) {
        return invalid("image", "required");
    }
    if request["project"].is_string() == request["organization"].is_string() {
        return invalid("project", "exactly one of project and organization is required");
    }
    let Some(product) = PRODUCTS.iter().find(|product| product.0 == kind && offered(&zone, product)) else {
        return invalid("commercial_type", &format!("{kind} is not available in {zone}"));
    };
    let mut world = lock(&world);
    if world.out_of_stock.contains(&(zone.clone(), kind.to_owned())) {
        return problem(
            StatusCode::BAD_REQUEST,
            "out_of_stock",
            &format!("{kind} is out of stock in {zone}"),
            json!({ "resource": kind }),
        );
    }
    world.counter += 1;
    let id = uuid::Uuid::new_v4().to_string();
    let stamp = now();
    // `sbs_volume` templates become Block Storage volumes attached to the server.
    let mut volumes = serde_json::Map::new();
    for (slot, template) in request["volumes"].as_object().cloned().unwrap_or_default() {
        if template["volume_type"] != "sbs_volume" {
            return invalid("volumes", "GPU Instances boot from sbs_volume volumes");
        }
        let volume_id = uuid::Uuid::new_v4().to_string();
        let volume = json!({ "id": volume_id, "name": template["name"].as_str().unwrap_or(""), "size": template["size"],
            "type": "sbs_5k", "status": "in_use", "zone": zone, "project_id": request["project"],
            "references": [{ "product_resource_type": "instance_server", "product_resource_id": id }] });
        world.volumes.insert((zone.clone(), volume_id.clone()), volume);
        volumes.insert(slot, json!({ "id": volume_id, "volume_type": "sbs_volume", "zone": zone, "boot": false }));
    }
    let server = json!({
        "id": id, "name": name, "commercial_type": product.0, "project": request["project"],
        "organization": request["organization"].as_str().unwrap_or("00000000-0000-0000-0000-000000000001"),
        "tags": request["tags"].as_array().cloned().unwrap_or_default(), "state": "stopped", "state_detail": "",
        "image": { "id": uuid::Uuid::new_v4(), "name": request["image"] }, "volumes": volumes,
        "dynamic_ip_required": request["dynamic_ip_required"].as_bool().unwrap_or(false),
        "public_ip": null, "public_ips": [], "private_ip": null, "boot_type": request["boot_type"].as_str().unwrap_or("local"),
        "creation_date": stamp, "modification_date": stamp, "allowed_actions": ["poweron", "backup"], "zone": zone,
    });
    world.servers.insert((zone.clone(), id.clone()), server.clone());
    let mut headers = HeaderMap::new();
    if let Ok(location) = format!("/instance/v1/zones/{zone}/servers/{id}").parse() {
        headers.insert("location", location);
    }
    (StatusCode::CREATED, headers, axum::Json(json!({ "server": server }))).into_response()
}

async fn get_server(State(world): State<Shared>, Path((zone, id)): Path<(String, String)>) -> Response {
    let mut world = lock(&world);
    let counter = world.counter;
    match world.servers.get_mut(&(zone, id.clone())) {
        Some(server) => {
            settle(server, counter);
            axum::Json(json!({ "server": server })).into_response()
        }
        None => not_found("instance_server", &id),
    }
}

async fn delete_server(State(world): State<Shared>, Path((zone, id)): Path<(String, String)>) -> Response {
    let mut world = lock(&world);
    let key = (zone, id.clone());
    match world.servers.get(&key) {
        None => not_found("instance_server", &id),
        Some(server) if server["state"] != "stopped" => problem(
            StatusCode::BAD_REQUEST,
            "precondition_failed",
            "server should be stopped",
            json!({ "precondition": "resource_still_in_use" }),
        ),
        Some(_) => {
            world.servers.remove(&key);
            detach(&mut world, &key.1);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn action(State(world): State<Shared>, Path((zone, id)): Path<(String, String)>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(action) = request["action"].as_str() else { return invalid("action", "required") };
    let mut world = lock(&world);
    let world_failures = world.failing_starts.clone();
    let key = (zone.clone(), id.clone());
    let Some(server) = world.servers.get_mut(&key) else { return not_found("instance_server", &id) };
    let allowed =
        server["allowed_actions"].as_array().is_some_and(|actions| actions.iter().any(|known| known == action));
    if !allowed {
        return problem(
            StatusCode::BAD_REQUEST,
            "precondition_failed",
            &format!("action {action} is not allowed in state {}", server["state"]),
            json!({}),
        );
    }
    match action {
        "poweron" => {
            let kind = server["commercial_type"].as_str().unwrap_or_default().to_owned();
            let failure = world_failure(&world_failures, &zone, &kind);
            if failure == Some(StartFailure::Refused) {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "out_of_stock",
                    &format!("{kind} is out of stock in {zone}"),
                    json!({ "resource": kind }),
                );
            }
            server["state"] = json!("starting");
            let detail = if failure.is_some() { "allocating node (no stock)" } else { "allocating node" };
            server["state_detail"] = json!(detail);
            server["allowed_actions"] = json!(["stop_in_place", "backup"]);
        }
        "poweroff" => {
            server["state"] = json!("stopped");
            server["public_ip"] = Value::Null;
            server["public_ips"] = json!([]);
            server["allowed_actions"] = json!(["poweron", "backup"]);
        }
        "terminate" => {
            // Local volumes go with the server; `sbs_volume` volumes are only detached.
            world.servers.remove(&key);
            world.user_data.remove(&key);
            detach(&mut world, &id);
        }
        _ => {}
    }
    let task = json!({ "id": uuid::Uuid::new_v4(), "description": format!("server_batch_{action}"), "status": "pending",
        "href_from": format!("/servers/{id}/action"), "href_result": format!("/servers/{id}"), "started_at": now(),
        "terminated_at": null, "progress": 0, "zone": zone });
    (StatusCode::ACCEPTED, axum::Json(json!({ "task": task }))).into_response()
}

fn world_failure(failures: &BTreeMap<(String, String), StartFailure>, zone: &str, kind: &str) -> Option<StartFailure> {
    failures.get(&(zone.to_owned(), kind.to_owned())).copied()
}

/// The server's Block Storage volumes start detaching: in the background, as the real API
/// does; they stay `in_use` until [`World::detach_after`] has passed, then stay, and bill,
/// `available` until deleted.
fn detach(world: &mut World, server: &str) {
    let ready_at = std::time::Instant::now() + world.detach_after;
    for (key, volume) in &world.volumes {
        let attached = volume["references"]
            .as_array()
            .is_some_and(|references| references.iter().any(|reference| reference["product_resource_id"] == server));
        if attached {
            world.detaching.insert(key.clone(), ready_at);
        }
    }
    settle_volumes(world);
}

/// Volumes whose background detach is over become `available`.
fn settle_volumes(world: &mut World) {
    let now = std::time::Instant::now();
    let done: Vec<(String, String)> =
        world.detaching.iter().filter(|(_, ready_at)| **ready_at <= now).map(|(key, _)| key.clone()).collect();
    for key in done {
        world.detaching.remove(&key);
        if let Some(volume) = world.volumes.get_mut(&key) {
            volume["status"] = json!("available");
            volume["references"] = json!([]);
        }
    }
}

async fn list_volumes(
    State(world): State<Shared>,
    Path(zone): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let mut world = lock(&world);
    settle_volumes(&mut world);
    let volumes: Vec<Value> = world
        .volumes
        .iter()
        .filter(|((volume_zone, _), _)| *volume_zone == zone)
        .map(|(_, volume)| volume.clone())
        .filter(|volume| {
            query.get("name").is_none_or(|name| volume["name"].as_str().is_some_and(|own| own.contains(name.as_str())))
        })
        .filter(|volume| query.get("project_id").is_none_or(|project| volume["project_id"] == project.as_str()))
        .collect();
    // Block Storage pages with `page` and `page_size` and counts in the body.
    let total = volumes.len();
    let (volumes, _) = slice(volumes, &query, "page_size", world.page_limit);
    axum::Json(json!({ "total_count": total, "volumes": volumes })).into_response()
}

async fn delete_volume(State(world): State<Shared>, Path((zone, id)): Path<(String, String)>) -> Response {
    let mut world = lock(&world);
    settle_volumes(&mut world);
    let key = (zone, id.clone());
    match world.volumes.get(&key) {
        None => not_found("volume", &id),
        Some(volume) if volume["status"] == "in_use" => problem(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "volume is in use",
            json!({ "precondition": "resource_still_in_use" }),
        ),
        Some(_) => {
            world.volumes.remove(&key);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn set_user_data(
    State(world): State<Shared>,
    Path((zone, id, key)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let mut world = lock(&world);
    if !world.servers.contains_key(&(zone.clone(), id.clone())) {
        return not_found("instance_server", &id);
    }
    if world.failing_user_data > 0 {
        world.failing_user_data -= 1;
        return problem(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "try again later", json!({}));
    }
    if key != "cloud-init" {
        return invalid("key", "only cloud-init is used here");
    }
    world.user_data.insert((zone, id), String::from_utf8_lossy(&body).into_owned());
    StatusCode::NO_CONTENT.into_response()
}

/// A page of a map keyed by type (`products/servers` and its availability), `X-Total-Count`
/// counting every entry.
fn map_page(entries: Vec<(String, Value)>, query: &BTreeMap<String, String>, limit: usize) -> Response {
    let count = entries.len();
    let servers: serde_json::Map<String, Value> = slice(entries, query, "per_page", limit).0.into_iter().collect();
    let mut response = axum::Json(json!({ "servers": servers })).into_response();
    response.headers_mut().insert("x-total-count", axum::http::HeaderValue::from(count));
    response
}

async fn products(
    State(world): State<Shared>,
    Path(zone): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let limit = lock(&world).page_limit;
    let types: Vec<(String, Value)> = PRODUCTS
        .iter()
        .filter(|product| offered(&zone, product))
        .map(|(code, price, gpus, gpu_name, gpu_memory, ncpus, ram, _)| {
            let gpu_info = gpu_name.map_or(Value::Null, |name| {
                json!({ "gpu_manufacturer": "NVIDIA", "gpu_name": name, "gpu_memory": gpu_memory * GIB })
            });
            let spec = json!({ "arch": "x86_64", "ncpus": ncpus, "ram": ram * GIB, "gpu": gpus, "gpu_info": gpu_info,
                "hourly_price": price, "monthly_price": price * 730.0, "volumes_constraint": { "min_size": 0, "max_size": 0 },
                "end_of_service": false, "alt_names": [] });
            ((*code).to_owned(), spec)
        })
        .collect();
    map_page(types, &query, limit)
}

async fn availability(
    State(world): State<Shared>,
    Path(zone): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let world = lock(&world);
    let servers: Vec<(String, Value)> = PRODUCTS
        .iter()
        .filter(|product| offered(&zone, product))
        .map(|product| {
            let stock = if world.out_of_stock.contains(&(zone.clone(), product.0.to_owned())) {
                "shortage"
            } else {
                "available"
            };
            (product.0.to_owned(), json!({ "availability": stock }))
        })
        .collect();
    map_page(servers, &query, world.page_limit)
}

async fn list_ips(
    State(world): State<Shared>,
    Path(zone): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    uri: Uri,
) -> Response {
    let world = lock(&world);
    let limit = world.page_limit;
    let wanted: Vec<&str> = query.get("tags").map(|tags| tags.split(',').collect()).unwrap_or_default();
    let ips: Vec<Value> = world
        .ips
        .iter()
        .filter(|((ip_zone, _), _)| *ip_zone == zone)
        .map(|(_, ip)| ip.clone())
        .filter(|ip| {
            let tags = ip["tags"].as_array().cloned().unwrap_or_default();
            wanted.iter().all(|wanted| tags.iter().any(|tag| tag == *wanted))
        })
        .filter(|ip| query.get("project").is_none_or(|project| ip["project"] == project.as_str()))
        .collect();
    page(ips, &query, &uri, "ips", limit)
}

async fn create_ip(State(world): State<Shared>, Path(zone): Path<String>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !request["project"].is_string() {
        return invalid("project", "required");
    }
    let mut world = lock(&world);
    world.counter += 1;
    let counter = world.counter;
    let id = uuid::Uuid::new_v4().to_string();
    let ip = json!({ "id": id, "address": format!("163.172.{}.{}", counter / 250 % 250, counter % 250 + 1),
        "type": request["type"].as_str().unwrap_or("routed_ipv4"), "project": request["project"],
        "tags": request["tags"].as_array().cloned().unwrap_or_default(), "server": request["server"], "zone": zone });
    world.ips.insert((zone, id), ip.clone());
    (StatusCode::CREATED, axum::Json(json!({ "ip": ip }))).into_response()
}

async fn delete_ip(State(world): State<Shared>, Path((zone, id)): Path<(String, String)>) -> Response {
    match lock(&world).ips.remove(&(zone, id.clone())) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found("instance_ip", &id),
    }
}

/// A route the API does not have: a plain 404 without a resource type, unlike a missing
/// resource's `not_found` (a client must not take a wrong `SCW_API_URL` for "already gone").
async fn unknown(method: Method, uri: Uri) -> Response {
    let text = format!("404 page not found: {method} {}", uri.path());
    (StatusCode::NOT_FOUND, [("content-type", "text/plain; charset=utf-8")], text).into_response()
}

impl FakeScaleway {
    /// Serves the fake on a free port of 127.0.0.1, accepting `secret` as `X-Auth-Token`.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(secret: &str) -> Self {
        let world: Shared = Arc::new(Mutex::new(World {
            secret: secret.to_owned(),
            detach_after: std::time::Duration::from_millis(600),
            page_limit: 100,
            ..World::default()
        }));
        let zone = "/instance/v1/zones/{zone}";
        let router = Router::new()
            .route(&format!("{zone}/servers"), get(list_servers).post(create_server))
            .route(&format!("{zone}/servers/{{id}}"), get(get_server).delete(delete_server))
            .route(&format!("{zone}/servers/{{id}}/action"), post(action))
            .route(&format!("{zone}/servers/{{id}}/user_data/{{key}}"), patch(set_user_data))
            .route(&format!("{zone}/products/servers"), get(products))
            .route(&format!("{zone}/products/servers/availability"), get(availability))
            .route(&format!("{zone}/ips"), get(list_ips).post(create_ip))
            .route(&format!("{zone}/ips/{{id}}"), axum::routing::delete(delete_ip))
            .route("/block/v1alpha1/zones/{zone}/volumes", get(list_volumes))
            .route("/block/v1alpha1/zones/{zone}/volumes/{id}", axum::routing::delete(delete_volume))
            .fallback(unknown)
            .layer(axum::middleware::from_fn_with_state(world.clone(), gate))
            .with_state(world.clone());
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|error| panic!("bind: {error}"));
        let address = listener.local_addr().unwrap_or_else(|error| panic!("address: {error}"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { address, world, server }
    }

    /// What `SCW_API_URL` should be.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `kind` in `zone` answers `out_of_stock` (and shows `shortage`) from now on.
    pub fn out_of_stock(&self, zone: &str, kind: &str) {
        lock(&self.world).out_of_stock.insert((zone.to_owned(), kind.to_owned()));
    }

    /// `kind` in `zone` is created, but its poweron fails for stock, `how`.
    pub fn fail_starts(&self, zone: &str, kind: &str, how: StartFailure) {
        lock(&self.world).failing_starts.insert((zone.to_owned(), kind.to_owned()), how);
    }

    /// How long a volume takes to detach in the background (default 600 ms).
    pub fn detach_after(&self, delay: std::time::Duration) {
        lock(&self.world).detach_after = delay;
    }

    /// Serves at most `limit` items a page (the real API: 100), to exercise paging.
    pub fn page_limit(&self, limit: usize) {
        lock(&self.world).page_limit = limit.max(1);
    }

    /// The next `count` user-data calls answer 503.
    pub fn fail_user_data_next(&self, count: u32) {
        lock(&self.world).failing_user_data = count;
    }

    /// The next `count` requests answer 429.
    pub fn throttle_next(&self, count: u32) {
        lock(&self.world).throttle = count;
    }

    /// The next `count` requests answer 503.
    pub fn fail_next(&self, count: u32) {
        lock(&self.world).unavailable = count;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.world).requests.clone()
    }

    /// Every server, as the API would show it.
    pub fn servers(&self) -> Vec<Value> {
        lock(&self.world).servers.values().cloned().collect()
    }

    /// Every Block Storage volume.
    pub fn volumes(&self) -> Vec<Value> {
        let mut world = lock(&self.world);
        settle_volumes(&mut world);
        world.volumes.values().cloned().collect()
    }

    pub fn user_data(&self, zone: &str, id: &str) -> Option<String> {
        lock(&self.world).user_data.get(&(zone.to_owned(), id.to_owned())).cloned()
    }

    /// A running server made behind Quartermaster's back in `project`; returns its id.
    pub fn plant(&self, zone: &str, name: &str, kind: &str, project: &str, tags: &[String]) -> String {
        let mut world = lock(&self.world);
        world.counter += 1;
        let id = uuid::Uuid::new_v4().to_string();
        let stamp = now();
        let mut server = json!({ "id": id, "name": name, "commercial_type": kind, "project": project, "tags": tags,
            "state": "starting", "dynamic_ip_required": true, "public_ip": null, "public_ips": [], "private_ip": null,
            "creation_date": stamp, "modification_date": stamp, "allowed_actions": [], "zone": zone });
        settle(&mut server, world.counter);
        world.servers.insert((zone.to_owned(), id.clone()), server);
        id
    }

    /// Removes a server behind Quartermaster's back (its Block Storage volumes stay, detached).
    pub fn remove(&self, zone: &str, id: &str) {
        let mut world = lock(&self.world);
        world.servers.remove(&(zone.to_owned(), id.to_owned()));
        detach(&mut world, id);
    }
}
