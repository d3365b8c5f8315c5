//! Scaleway, through its Instance API v1 over HTTP (`docs/providers.md` lists the calls and
//! shapes followed).
//!
//! - Auth: the secret key as `X-Auth-Token`; never logged (it lives in a [`Secret`]).
//! - A server's provider id is `<zone>/<server id>` (servers are per zone).
//! - Only what is ours: every server is tagged `qm-managed=true` and
//!   `qm-installation=<QM_INSTALLATION>`, its root volume is named
//!   `qm-<installation>-<instance id>`, and every listing is filtered by the project
//!   (`SCW_DEFAULT_PROJECT_ID`) and those tags or that name: another Quartermaster in the same
//!   organization, or a person's servers in another project, are never listed, let alone
//!   terminated.
//! - Creation is idempotent: a server named `qm-<instance id>` in the zone and project is looked
//!   up first (and, when it never started, given the user data again, in case the call that set
//!   it failed); a new one is tagged `qm-instance-id=<id>`, gets a dynamic public IP, and its
//!   user data is set as `cloud-init`.
//! - Starting: `poweron`; a start refused for stock, or a server found `stopped` again right
//!   after it, is a capacity error (the orchestrator removes the server and fails over).
//! - Listing pages through every configured zone, following `X-Total-Count` (Instance API) or
//!   `total_count` (Block Storage, `page`/`page_size`).
//! - Terminating: a running server takes the `terminate` action; one that never ran (`stopped`)
//!   is deleted; one between states is retried later (transient). Its root volume (Block
//!   Storage, which `terminate` only detaches, in the background) is deleted once detached, and
//!   flexible IPs tagged for the instance are released. Already gone is a success.
//! - Errors are classified by the body's `type`: `out_of_stock` → capacity, quotas → quota,
//!   429 → throttled, 5xx and `transient_state` → transient, authentication and permission
//!   errors → auth, `not_found` (and the older `unknown_resource`) → not found, anything else
//!   4xx → invalid; a 404 without a resource type (a route the API does not have: a wrong
//!   `SCW_API_URL`) is invalid, never "already gone".

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use qm_config::{Environment, Secret};
use qm_domain::InstanceId;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    CloudProvider, CreateRequest, ErrorKind, INSTANCE_TAG, Leftover, ProviderError, ProviderInstance, ProviderOffer,
    ProviderStatus, instance_name,
};

pub const NAME: &str = "scaleway";
pub const DEFAULT_API_URL: &str = "https://api.scaleway.com";
/// Every zone of the Instance API.
pub const ZONES: [&str; 10] = [
    "fr-par-1", "fr-par-2", "fr-par-3", "nl-ams-1", "nl-ams-2", "nl-ams-3", "pl-waw-1", "pl-waw-2", "pl-waw-3",
    "it-mil-1",
];
const MANAGED_TAG: &str = "qm-managed=true";
const INSTALLATION_TAG: &str = "qm-installation";
const PER_PAGE: usize = 100;
/// Block volume of a new server (GPU types boot from block storage).
const ROOT_VOLUME_BYTES: u64 = 100_000_000_000;
/// How long a terminated server's root volume may take to detach before its deletion is left
/// to the next attempt.
const VOLUME_PATIENCE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
pub struct ScalewayConfig {
    pub api_url: String,
    pub secret_key: Secret,
    pub project_id: String,
    /// Where servers are created, listed and offered.
    pub zones: Vec<String>,
    /// Image id or label of new servers.
    pub image: String,
    /// `QM_INSTALLATION`: only resources carrying it are ours.
    pub installation: String,
}

impl ScalewayConfig {
    /// From `SCW_SECRET_KEY` (or `_FILE`), `SCW_DEFAULT_PROJECT_ID`, `SCW_API_URL`,
    /// `QM_SCALEWAY_ZONES` (default: every zone), `QM_SCALEWAY_IMAGE` and `QM_INSTALLATION`.
    ///
    /// # Errors
    /// A message naming the missing variable.
    pub fn from_environment(environment: &Environment) -> Result<Self, String> {
        let secret_key = environment
            .secret("SCW_SECRET_KEY")
            .map_err(|error| error.to_string())?
            .ok_or("the scaleway provider needs SCW_SECRET_KEY (or SCW_SECRET_KEY_FILE)")?;
        let project_id =
            environment.get("SCW_DEFAULT_PROJECT_ID").ok_or("the scaleway provider needs SCW_DEFAULT_PROJECT_ID")?;
        let zones = match environment.get("QM_SCALEWAY_ZONES") {
            Some(list) => list.split(',').map(|zone| zone.trim().to_owned()).filter(|zone| !zone.is_empty()).collect(),
            None => ZONES.iter().map(|zone| (*zone).to_owned()).collect(),
        };
        Ok(Self {
            api_url: environment.get("SCW_API_URL").unwrap_or_else(|| DEFAULT_API_URL.to_owned()),
            secret_key,
            project_id,
            zones,
            image: environment.get("QM_SCALEWAY_IMAGE").unwrap_or_else(|| "ubuntu_jammy_gpu_os_12".to_owned()),
            installation: qm_config::installation(environment).map_err(|error| error.to_string())?,
        })
    }
}

/// How a list pages (see [`ScalewayProvider::page_bodies`]).
#[derive(Clone, Copy)]
enum Paging {
    Instance,
    Block,
}

/// What a call sends.
enum Payload {
    None,
    Json(Value),
    /// `text/plain` (user data).
    Text(String),
}

pub struct ScalewayProvider {
    config: ScalewayConfig,
    client: reqwest::Client,
}

/// `fr-par-2` → `fr-par`.
pub fn region_of(zone: &str) -> String {
    zone.rsplit_once('-').map_or_else(|| zone.to_owned(), |(region, _)| region.to_owned())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, kind, message)
}

/// Classifies an error answer by its `type` first, its status second.
fn classify(status: StatusCode, body: &Value) -> ProviderError {
    let kind_text = body["type"].as_str().unwrap_or_default();
    let message = body["message"].as_str().unwrap_or("no message");
    let quota = kind_text == "quotas_exceeded" || message.to_ascii_lowercase().contains("quota");
    let kind = match kind_text {
        "out_of_stock" => ErrorKind::Capacity,
        _ if quota => ErrorKind::Quota,
        "not_found" | "unknown_resource" => ErrorKind::NotFound,
        "transient_state" | "locked" => ErrorKind::Transient,
        "denied_authentication" | "authentication_error" | "permissions_denied" => ErrorKind::Auth,
        _ if status == StatusCode::TOO_MANY_REQUESTS => ErrorKind::Throttled,
        _ if status.is_server_error() => ErrorKind::Transient,
        _ if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => ErrorKind::Auth,
        _ => ErrorKind::Invalid,
    };
    error(kind, format!("{status} {kind_text}: {message}"))
}

/// `<zone>/<id>`.
fn split(provider_id: &str) -> Result<(&str, &str), ProviderError> {
    provider_id
        .split_once('/')
        .ok_or_else(|| error(ErrorKind::NotFound, format!("`{provider_id}` is not a Scaleway server id (zone/id)")))
}

fn status_of(state: &str) -> ProviderStatus {
    match state {
        "running" => ProviderStatus::Running,
        "stopping" => ProviderStatus::Stopping,
        "stopped" | "stopped in place" => ProviderStatus::Stopped,
        _ => ProviderStatus::Pending,
    }
}

/// Our view of a Scaleway server.
fn server_view(zone: &str, server: &Value) -> ProviderInstance {
    let tags: Vec<&str> =
        server["tags"].as_array().map(|tags| tags.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let instance_id = tags
        .iter()
        .find_map(|tag| tag.strip_prefix(&format!("{INSTANCE_TAG}=")))
        .and_then(|id| id.parse::<InstanceId>().ok());
    let address = server["public_ip"]["address"]
        .as_str()
        .or_else(|| server["public_ips"].as_array().and_then(|ips| ips.first()).and_then(|ip| ip["address"].as_str()))
        .or_else(|| server["private_ip"].as_str())
        .map(str::to_owned);
    let created_at = server["creation_date"]
        .as_str()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .map_or_else(chrono::Utc::now, |time| time.with_timezone(&chrono::Utc));
    ProviderInstance {
        provider_id: format!("{zone}/{}", server["id"].as_str().unwrap_or_default()),
        instance_id,
        zone: zone.to_owned(),
        instance_type: server["commercial_type"].as_str().unwrap_or_default().to_owned(),
        status: status_of(server["state"].as_str().unwrap_or_default()),
        address,
        created_at,
    }
}

impl ScalewayProvider {
    pub fn new(config: ScalewayConfig) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        Self { config, client }
    }

    fn url(&self, zone: &str, path: &str) -> String {
        format!("{}/instance/v1/zones/{zone}{path}", self.config.api_url.trim_end_matches('/'))
    }

    /// A Block Storage volumes URL (the Block Storage API, beside the Instance API).
    fn volumes_url(&self, zone: &str, suffix: &str) -> String {
        format!("{}/block/v1alpha1/zones/{zone}/volumes{suffix}", self.config.api_url.trim_end_matches('/'))
    }

    /// One call (`query` encoded); the body of a success (`Null` when empty) and its headers.
    async fn call(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
        payload: Payload,
    ) -> Result<(Value, reqwest::header::HeaderMap), ProviderError> {
        let mut url = reqwest::Url::parse(url)
            .map_err(|failure| error(ErrorKind::Invalid, format!("SCW_API_URL gives an invalid URL: {failure}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.client.request(method, url).header("X-Auth-Token", self.config.secret_key.expose());
        request = match payload {
            Payload::None => request,
            Payload::Json(body) => request.json(&body),
            Payload::Text(text) => request.header("content-type", "text/plain").body(text),
        };
        let response = request.send().await.map_err(|failure| {
            error(ErrorKind::Transient, format!("cannot reach the Scaleway API: {}", failure.without_url()))
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) };
        if status.is_success() { Ok((body, headers)) } else { Err(classify(status, &body)) }
    }

    /// A `DELETE` for which already gone is a success.
    async fn delete(&self, url: &str) -> Result<(), ProviderError> {
        match self.call(Method::DELETE, url, &[], Payload::None).await {
            Ok(_) => Ok(()),
            Err(failure) if failure.kind == ErrorKind::NotFound => Ok(()),
            Err(failure) => Err(failure),
        }
    }

    /// Every page of a list under `query` (filters): the bodies, whose `field` is an array or a
    /// map keyed by name. The Instance API pages with `per_page` and counts in `X-Total-Count`;
    /// Block Storage with `page_size` and `total_count` in the body.
    async fn page_bodies(
        &self,
        url: &str,
        query: &[(&str, &str)],
        field: &str,
        paging: Paging,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut bodies = Vec::new();
        let (mut page, mut seen) = (1, 0);
        let size = PER_PAGE.to_string();
        let size_parameter = match paging {
            Paging::Instance => "per_page",
            Paging::Block => "page_size",
        };
        loop {
            let page_text = page.to_string();
            let mut paged = query.to_vec();
            paged.extend([("page", page_text.as_str()), (size_parameter, size.as_str())]);
            let (body, headers) = self.call(Method::GET, url, &paged, Payload::None).await?;
            let fetched = match &body[field] {
                Value::Array(items) => items.len(),
                Value::Object(items) => items.len(),
                _ => 0,
            };
            seen += fetched;
            let total = match paging {
                Paging::Instance => headers
                    .get("x-total-count")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<usize>().ok()),
                Paging::Block => body["total_count"].as_u64().and_then(|total| usize::try_from(total).ok()),
            };
            bodies.push(body);
            if fetched == 0 || seen >= total.unwrap_or(seen) {
                return Ok(bodies);
            }
            page += 1;
        }
    }

    /// The items of `field` in every body.
    fn items(bodies: Vec<Value>, field: &str) -> Vec<Value> {
        bodies
            .into_iter()
            .flat_map(|mut body| match body[field].take() {
                Value::Array(items) => items,
                _ => Vec::new(),
            })
            .collect()
    }

    /// Every item of an Instance API list of `field` in `zone` under `query`.
    async fn pages(
        &self,
        zone: &str,
        path: &str,
        query: &[(&str, &str)],
        field: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let bodies = self.page_bodies(&self.url(zone, path), query, field, Paging::Instance).await?;
        Ok(Self::items(bodies, field))
    }

    /// Every entry of an Instance API map of `field` (`products/servers`) in `zone`.
    async fn map_pages(&self, zone: &str, path: &str, field: &str) -> Result<BTreeMap<String, Value>, ProviderError> {
        let bodies = self.page_bodies(&self.url(zone, path), &[], field, Paging::Instance).await?;
        Ok(bodies
            .into_iter()
            .flat_map(|mut body| match body[field].take() {
                Value::Object(items) => items.into_iter().collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect())
    }

    async fn server(&self, zone: &str, id: &str) -> Result<Value, ProviderError> {
        let (body, _) = self.call(Method::GET, &self.url(zone, &format!("/servers/{id}")), &[], Payload::None).await?;
        Ok(body["server"].clone())
    }

    /// Block Storage volumes of the project whose name contains `name`, every page (`page` and
    /// `page_size`, `total_count` in the body).
    async fn volumes(&self, zone: &str, name: &str) -> Result<Vec<Value>, ProviderError> {
        let query = [("project_id", self.config.project_id.as_str()), ("name", name)];
        let bodies = self.page_bodies(&self.volumes_url(zone, ""), &query, "volumes", Paging::Block).await?;
        Ok(Self::items(bodies, "volumes"))
    }

    /// The name of an instance's root volume, which says whose it is.
    fn volume_name(&self, instance: InstanceId) -> String {
        format!("qm-{}-{instance}", self.config.installation)
    }

    /// `qm-managed=true,qm-installation=<id>`: what every one of our servers carries.
    fn ownership_tags(&self) -> String {
        format!("{MANAGED_TAG},{INSTALLATION_TAG}={}", self.config.installation)
    }

    async fn find_by_name(&self, zone: &str, name: &str) -> Result<Option<Value>, ProviderError> {
        let query = [("name", name), ("project", self.config.project_id.as_str())];
        let servers = self.pages(zone, "/servers", &query, "servers").await?;
        // The name filter matches substrings; only the exact name is ours.
        Ok(servers.into_iter().find(|server| server["name"] == name))
    }

    /// Sets `user_data` as the server's `cloud-init` key (nothing when empty).
    async fn set_user_data(&self, zone: &str, server: &Value, user_data: &str) -> Result<(), ProviderError> {
        if user_data.is_empty() {
            return Ok(());
        }
        let id = server["id"].as_str().unwrap_or_default();
        let url = self.url(zone, &format!("/servers/{id}/user_data/cloud-init"));
        self.call(Method::PATCH, &url, &[], Payload::Text(user_data.to_owned())).await?;
        Ok(())
    }

    fn zone_allowed(&self, zone: &str) -> Result<(), ProviderError> {
        if self.config.zones.iter().any(|allowed| allowed == zone) {
            Ok(())
        } else {
            Err(error(ErrorKind::Invalid, format!("zone `{zone}` is not one of QM_SCALEWAY_ZONES")))
        }
    }

    /// Deletes the Block Storage volumes named `name` (a server's root volume, which `terminate`
    /// only detaches and which bills until deleted), waiting up to [`VOLUME_PATIENCE`] for them to
    /// detach.
    async fn delete_volumes(&self, zone: &str, name: &str) -> Result<(), ProviderError> {
        let deadline = tokio::time::Instant::now() + VOLUME_PATIENCE;
        loop {
            let mut attached = 0;
            for volume in self.volumes(zone, name).await?.iter().filter(|volume| volume["name"] == name) {
                let id = volume["id"].as_str().unwrap_or_default();
                if volume["status"] == "in_use" {
                    attached += 1;
                    continue;
                }
                match self.delete(&self.volumes_url(zone, &format!("/{id}"))).await {
                    Ok(()) => {}
                    Err(failure) if failure.message.contains("precondition_failed") => attached += 1,
                    Err(failure) => return Err(failure),
                }
            }
            if attached == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(error(ErrorKind::Transient, format!("volume {name} still attached; deleting it later")));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Releases the flexible IPs tagged for `instance`.
    async fn release_ips(&self, zone: &str, instance: InstanceId) -> Result<(), ProviderError> {
        let tag = format!("{INSTANCE_TAG}={instance}");
        let query = [("tags", tag.as_str()), ("project", self.config.project_id.as_str())];
        for ip in self.pages(zone, "/ips", &query, "ips").await? {
            let Some(id) = ip["id"].as_str() else { continue };
            self.delete(&self.url(zone, &format!("/ips/{id}"))).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl CloudProvider for ScalewayProvider {
    fn name(&self) -> &str {
        NAME
    }

    async fn create(&self, request: &CreateRequest) -> Result<ProviderInstance, ProviderError> {
        self.zone_allowed(&request.zone)?;
        let zone = request.zone.as_str();
        let name = instance_name(request.instance_id);
        if let Some(existing) = self.find_by_name(zone, &name).await? {
            // A create retried after its user-data call failed: a server that never started is
            // given the user data again (the call is idempotent; a started one keeps its own).
            if existing["state"] == "stopped" {
                self.set_user_data(zone, &existing, &request.user_data).await?;
            }
            return Ok(server_view(zone, &existing));
        }
        let mut tags = vec![
            format!("{INSTANCE_TAG}={}", request.instance_id),
            MANAGED_TAG.to_owned(),
            format!("{INSTALLATION_TAG}={}", self.config.installation),
        ];
        tags.extend(request.tags.iter().map(|(key, value)| format!("{key}={value}")));
        let volume = self.volume_name(request.instance_id);
        let body = json!({
            "name": name, "commercial_type": request.instance_type, "image": self.config.image,
            "project": self.config.project_id, "dynamic_ip_required": true, "boot_type": "local", "tags": tags,
            "volumes": { "0": { "name": volume, "size": ROOT_VOLUME_BYTES, "volume_type": "sbs_volume" } },
        });
        let (created, _) = self.call(Method::POST, &self.url(zone, "/servers"), &[], Payload::Json(body)).await?;
        let server = &created["server"];
        self.set_user_data(zone, server, &request.user_data).await?;
        Ok(server_view(zone, server))
    }

    async fn start(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        let (zone, id) = split(provider_id)?;
        let server = self.server(zone, id).await?;
        if server["state"] == "stopped" || server["state"] == "stopped in place" {
            let url = self.url(zone, &format!("/servers/{id}/action"));
            self.call(Method::POST, &url, &[], Payload::Json(json!({ "action": "poweron" }))).await?;
            let started = self.server(zone, id).await?;
            // Accepted, then back to `stopped`: no node could be allocated for it.
            if started["state"] == "stopped" {
                let detail = started["state_detail"].as_str().unwrap_or_default();
                return Err(error(
                    ErrorKind::Capacity,
                    format!("server {id} fell back to stopped at poweron: {detail}"),
                ));
            }
            return Ok(server_view(zone, &started));
        }
        Ok(server_view(zone, &server))
    }

    async fn describe(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        let (zone, id) = split(provider_id)?;
        Ok(server_view(zone, &self.server(zone, id).await?))
    }

    async fn list(&self) -> Result<Vec<ProviderInstance>, ProviderError> {
        let mut instances = Vec::new();
        for zone in &self.config.zones {
            let tags = self.ownership_tags();
            let query = [("tags", tags.as_str()), ("project", self.config.project_id.as_str())];
            for server in self.pages(zone, "/servers", &query, "servers").await? {
                instances.push(server_view(zone, &server));
            }
        }
        Ok(instances)
    }

    async fn terminate(&self, provider_id: &str) -> Result<(), ProviderError> {
        // Not an id this provider could have made: nothing of ours to terminate.
        let Ok((zone, id)) = split(provider_id) else { return Ok(()) };
        let server = match self.server(zone, id).await {
            Ok(server) => server,
            Err(failure) if failure.kind == ErrorKind::NotFound => return Ok(()),
            Err(failure) => return Err(failure),
        };
        // A server that never ran is deleted; a running one takes the `terminate` action; one
        // between states is tried again later.
        match server["state"].as_str().unwrap_or_default() {
            "stopped" | "stopped in place" => self.delete(&self.url(zone, &format!("/servers/{id}"))).await?,
            "running" => {
                let url = self.url(zone, &format!("/servers/{id}/action"));
                match self.call(Method::POST, &url, &[], Payload::Json(json!({ "action": "terminate" }))).await {
                    Ok(_) => {}
                    Err(failure) if failure.kind == ErrorKind::NotFound => {}
                    Err(failure) => return Err(failure),
                }
            }
            state => {
                let message = format!("server {id} is {state}; terminating once it settles");
                return Err(error(ErrorKind::Transient, message));
            }
        }
        if let Some(instance) = server_view(zone, &server).instance_id {
            self.release_ips(zone, instance).await?;
            self.delete_volumes(zone, &self.volume_name(instance)).await?;
        }
        Ok(())
    }

    /// Detached Block Storage volumes of the project named `qm-<installation>-<instance id>`
    /// in every zone.
    async fn leftovers(&self) -> Result<Vec<Leftover>, ProviderError> {
        let mut leftovers = Vec::new();
        let prefix = format!("qm-{}-", self.config.installation);
        for zone in &self.config.zones {
            for volume in self.volumes(zone, &prefix).await? {
                let name = volume["name"].as_str().unwrap_or_default();
                let Some(instance) = name.strip_prefix(&prefix).and_then(|id| id.parse::<InstanceId>().ok()) else {
                    continue;
                };
                if volume["status"] == "available" {
                    let id = format!("{zone}/{}", volume["id"].as_str().unwrap_or_default());
                    leftovers.push(Leftover { id, kind: "volume", instance_id: Some(instance) });
                }
            }
        }
        Ok(leftovers)
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> Result<(), ProviderError> {
        let Ok((zone, id)) = split(&leftover.id) else { return Ok(()) };
        self.delete(&self.volumes_url(zone, &format!("/{id}"))).await
    }

    async fn offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        let mut offers = Vec::new();
        for zone in &self.config.zones {
            let types = self.map_pages(zone, "/products/servers", "servers").await?;
            let availability = self.map_pages(zone, "/products/servers/availability", "servers").await?;
            for (code, spec) in types {
                let gpus = spec["gpu"].as_i64().unwrap_or(0);
                if gpus == 0 || spec["end_of_service"].as_bool() == Some(true) {
                    continue;
                }
                let Some(price) = spec["hourly_price"].as_f64() else { continue };
                let gib = |bytes: &Value| i32::try_from(bytes.as_u64().unwrap_or(0) >> 30).unwrap_or(i32::MAX);
                let stock =
                    availability.get(&code).and_then(|entry| entry["availability"].as_str()).unwrap_or("shortage");
                offers.push(ProviderOffer {
                    region: region_of(zone),
                    zone: zone.clone(),
                    instance_type: code.clone(),
                    gpu_model: spec["gpu_info"]["gpu_name"].as_str().map(str::to_owned),
                    gpu_count: i32::try_from(gpus).unwrap_or(i32::MAX),
                    gpu_memory_gb: gib(&spec["gpu_info"]["gpu_memory"]),
                    vcpus: i32::try_from(spec["ncpus"].as_i64().unwrap_or(0)).unwrap_or(i32::MAX),
                    memory_gb: gib(&spec["ram"]),
                    #[allow(clippy::cast_possible_truncation)]
                    hourly_price_micros: (price * 1_000_000.0).round() as i64,
                    currency: "EUR".into(),
                    available: stock != "shortage",
                });
            }
        }
        Ok(offers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_type_then_status() {
        let kind = |status: u16, body: Value| classify(StatusCode::from_u16(status).expect("status"), &body).kind;
        assert_eq!(kind(400, json!({ "type": "out_of_stock", "message": "no more L4" })), ErrorKind::Capacity);
        assert_eq!(kind(403, json!({ "type": "quotas_exceeded", "message": "q" })), ErrorKind::Quota);
        assert_eq!(
            kind(400, json!({ "type": "invalid_request_error", "message": "Quota exceeded for this resource." })),
            ErrorKind::Quota
        );
        assert_eq!(kind(429, json!({})), ErrorKind::Throttled);
        assert_eq!(kind(503, Value::Null), ErrorKind::Transient);
        assert_eq!(kind(409, json!({ "type": "transient_state" })), ErrorKind::Transient);
        assert_eq!(kind(401, json!({ "type": "denied_authentication" })), ErrorKind::Auth);
        assert_eq!(kind(404, json!({ "type": "not_found" })), ErrorKind::NotFound);
        assert_eq!(kind(404, json!({ "type": "unknown_resource" })), ErrorKind::NotFound);
        assert_eq!(kind(404, Value::Null), ErrorKind::Invalid, "a route the API does not have is not \"gone\"");
        assert_eq!(kind(400, json!({ "type": "invalid_arguments" })), ErrorKind::Invalid);
        assert_eq!(region_of("fr-par-2"), "fr-par");
    }
}
