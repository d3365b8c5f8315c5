//! Scaleway, through its Instance API v1 over HTTP (`docs/providers.md` lists the calls and
//! shapes followed).
//!
//! - Auth: the secret key as `X-Auth-Token`; never logged (it lives in a [`Secret`]).
//! - A server's provider id is `<zone>/<server id>` (servers are per zone).
//! - Creation is idempotent: a server named `qm-<instance id>` in the zone is looked up first; a
//!   new one is tagged `qm-instance-id=<id>` and `qm-managed=true`, gets a dynamic public IP,
//!   and its user data is set as `cloud-init`.
//! - Listing pages through every configured zone by the `qm-managed=true` tag, following
//!   `X-Total-Count`.
//! - Terminating: a running server takes the `terminate` action; one that never ran (`stopped`)
//!   is deleted; one between states is retried later (transient). Its root volume (Block
//!   Storage, named `qm-<instance id>`, which `terminate` only detaches) is deleted once
//!   detached, and flexible IPs tagged for the instance are released. Already gone is a success.
//! - Errors are classified by the body's `type`: `out_of_stock` → capacity, quotas → quota,
//!   429 → throttled, 5xx and `transient_state` → transient, authentication and permission
//!   errors → auth, `not_found` → not found, anything else 4xx → invalid.

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
}

impl ScalewayConfig {
    /// From `SCW_SECRET_KEY` (or `_FILE`), `SCW_DEFAULT_PROJECT_ID`, `SCW_API_URL`,
    /// `QM_SCALEWAY_ZONES` (default: every zone) and `QM_SCALEWAY_IMAGE`.
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
        })
    }
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
        "not_found" => ErrorKind::NotFound,
        "transient_state" | "locked" => ErrorKind::Transient,
        "denied_authentication" | "authentication_error" | "permissions_denied" => ErrorKind::Auth,
        _ if status == StatusCode::TOO_MANY_REQUESTS => ErrorKind::Throttled,
        _ if status.is_server_error() => ErrorKind::Transient,
        _ if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => ErrorKind::Auth,
        _ if status == StatusCode::NOT_FOUND => ErrorKind::NotFound,
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

    /// Every page of a list filtered by `filter` (`name`, `tags`, ...), following `X-Total-Count`.
    async fn pages(
        &self,
        zone: &str,
        path: &str,
        filter: (&str, &str),
        field: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut items = Vec::new();
        let mut page = 1;
        let per_page = PER_PAGE.to_string();
        let url = self.url(zone, path);
        loop {
            let page_text = page.to_string();
            let query = [filter, ("page", page_text.as_str()), ("per_page", per_page.as_str())];
            let (body, headers) = self.call(Method::GET, &url, &query, Payload::None).await?;
            let batch = body[field].as_array().cloned().unwrap_or_default();
            let fetched = batch.len();
            items.extend(batch);
            let total = headers
                .get("x-total-count")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<usize>().ok())
                .unwrap_or(items.len());
            if fetched == 0 || items.len() >= total {
                return Ok(items);
            }
            page += 1;
        }
    }

    async fn server(&self, zone: &str, id: &str) -> Result<Value, ProviderError> {
        let (body, _) = self.call(Method::GET, &self.url(zone, &format!("/servers/{id}")), &[], Payload::None).await?;
        Ok(body["server"].clone())
    }

    /// Block Storage volumes whose name contains `name`.
    async fn volumes(&self, zone: &str, name: &str) -> Result<Vec<Value>, ProviderError> {
        let (body, _) = self.call(Method::GET, &self.volumes_url(zone, ""), &[("name", name)], Payload::None).await?;
        Ok(body["volumes"].as_array().cloned().unwrap_or_default())
    }

    async fn find_by_name(&self, zone: &str, name: &str) -> Result<Option<Value>, ProviderError> {
        let servers = self.pages(zone, "/servers", ("name", name), "servers").await?;
        // The name filter matches substrings; only the exact name is ours.
        Ok(servers.into_iter().find(|server| server["name"] == name))
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
        for ip in self.pages(zone, "/ips", ("tags", &tag), "ips").await? {
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
            return Ok(server_view(zone, &existing));
        }
        let mut tags = vec![format!("{INSTANCE_TAG}={}", request.instance_id), MANAGED_TAG.to_owned()];
        tags.extend(request.tags.iter().map(|(key, value)| format!("{key}={value}")));
        let body = json!({
            "name": name, "commercial_type": request.instance_type, "image": self.config.image,
            "project": self.config.project_id, "dynamic_ip_required": true, "boot_type": "local", "tags": tags,
            "volumes": { "0": { "name": name, "size": ROOT_VOLUME_BYTES, "volume_type": "sbs_volume" } },
        });
        let (created, _) = self.call(Method::POST, &self.url(zone, "/servers"), &[], Payload::Json(body)).await?;
        let server = &created["server"];
        let id = server["id"].as_str().unwrap_or_default();
        if !request.user_data.is_empty() {
            let url = self.url(zone, &format!("/servers/{id}/user_data/cloud-init"));
            self.call(Method::PATCH, &url, &[], Payload::Text(request.user_data.clone())).await?;
        }
        Ok(server_view(zone, server))
    }

    async fn start(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        let (zone, id) = split(provider_id)?;
        let server = self.server(zone, id).await?;
        if server["state"] == "stopped" || server["state"] == "stopped in place" {
            let url = self.url(zone, &format!("/servers/{id}/action"));
            self.call(Method::POST, &url, &[], Payload::Json(json!({ "action": "poweron" }))).await?;
            return Ok(server_view(zone, &self.server(zone, id).await?));
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
            for server in self.pages(zone, "/servers", ("tags", MANAGED_TAG), "servers").await? {
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
            self.delete_volumes(zone, &instance_name(instance)).await?;
        }
        Ok(())
    }

    /// Detached Block Storage volumes named `qm-<instance id>` in every zone.
    async fn leftovers(&self) -> Result<Vec<Leftover>, ProviderError> {
        let mut leftovers = Vec::new();
        for zone in &self.config.zones {
            for volume in self.volumes(zone, "qm-").await? {
                let name = volume["name"].as_str().unwrap_or_default();
                let Some(instance) = name.strip_prefix("qm-").and_then(|id| id.parse::<InstanceId>().ok()) else {
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
            let per_page = [("per_page", "100")];
            let (types, _) =
                self.call(Method::GET, &self.url(zone, "/products/servers"), &per_page, Payload::None).await?;
            let availability_url = self.url(zone, "/products/servers/availability");
            let (availability, _) = self.call(Method::GET, &availability_url, &per_page, Payload::None).await?;
            let types: BTreeMap<String, Value> =
                types["servers"].as_object().map(|map| map.clone().into_iter().collect()).unwrap_or_default();
            for (code, spec) in types {
                let gpus = spec["gpu"].as_i64().unwrap_or(0);
                if gpus == 0 || spec["end_of_service"].as_bool() == Some(true) {
                    continue;
                }
                let Some(price) = spec["hourly_price"].as_f64() else { continue };
                let gib = |bytes: &Value| i32::try_from(bytes.as_u64().unwrap_or(0) >> 30).unwrap_or(i32::MAX);
                let stock = availability["servers"][&code]["availability"].as_str().unwrap_or("shortage");
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
        assert_eq!(kind(400, json!({ "type": "invalid_arguments" })), ErrorKind::Invalid);
        assert_eq!(region_of("fr-par-2"), "fr-par");
    }
}
