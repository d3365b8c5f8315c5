//! Offers, deployments, instances, pools, the action log and the live feed.

use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Column, ago, money, text};
use super::watch::{self, Verdict};
use super::{Context, Failure, Outcome, segment};

/// Query parameters, each value escaped.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={}", escape(value))))
        .collect();
    if encoded.is_empty() { String::new() } else { format!("?{}", encoded.join("&")) }
}

fn escape(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[derive(Args)]
pub struct OfferFilters {
    /// GPU model (L4, A10G, H100, ...).
    #[arg(long)]
    pub gpu: Option<String>,
    #[arg(long)]
    pub min_gpus: Option<u32>,
    /// Memory of one GPU, in GB.
    #[arg(long)]
    pub min_gpu_memory: Option<u32>,
    /// Highest hourly price in the reporting currency, e.g. 1.5.
    #[arg(long)]
    pub max_price: Option<String>,
    /// Providers, comma-separated (aws,scaleway).
    #[arg(long)]
    pub provider: Option<String>,
}

const OFFER_COLUMNS: &[Column] = &[
    Column { header: "PROVIDER", cell: |offer| text(&offer["provider"]) },
    Column { header: "ZONE", cell: |offer| text(&offer["zone"]) },
    Column { header: "TYPE", cell: |offer| text(&offer["instance_type"]) },
    Column {
        header: "GPU",
        cell: |offer| match offer["gpu_model"].as_str() {
            Some(model) => format!("{}x {model} {}GB", offer["gpu_count"], offer["gpu_memory_gb"]),
            None => "-".into(),
        },
    },
    Column { header: "HOURLY", cell: |offer| money(&offer["reporting_hourly_price_micros"]) },
    Column { header: "MONTHLY", cell: |offer| money(&offer["reporting_monthly_price_micros"]) },
    Column { header: "CUR", cell: |offer| text(&offer["reporting_currency"]) },
];

pub async fn offers(context: &Context, filters: &OfferFilters) -> Outcome {
    let path = format!(
        "/offers{}",
        query(&[
            ("gpu_model", filters.gpu.clone()),
            ("min_gpus", filters.min_gpus.map(|value| value.to_string())),
            ("min_gpu_memory_gb", filters.min_gpu_memory.map(|value| value.to_string())),
            ("max_hourly_price", filters.max_price.clone()),
            ("providers", filters.provider.clone()),
        ])
    );
    let offers = context.api.get(&path).await?;
    context.output.list(offers.as_array().map_or(&[], Vec::as_slice), OFFER_COLUMNS);
    Ok(())
}

#[derive(Args)]
pub struct Deploy {
    /// The model the workers serve, e.g. meta-llama/Llama-3.1-8B-Instruct.
    pub model: String,
    #[command(flatten)]
    pub filters: OfferFilters,
    /// With --provider and --type: the zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// With --provider and --zone: the instance type.
    #[arg(long = "type")]
    pub instance_type: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Print the placement and its cost per hour and per month; create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow each instance until it is ready (exit 1 if one fails).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

impl Deploy {
    fn body(&self) -> Outcome<Value> {
        let mut body = json!({ "model": self.model, "count": self.count });
        let filters = &self.filters;
        let constrained = filters.gpu.is_some()
            || filters.min_gpus.is_some()
            || filters.min_gpu_memory.is_some()
            || filters.max_price.is_some();
        match (&self.zone, &self.instance_type) {
            (Some(zone), Some(instance_type)) => {
                if constrained {
                    return Err(Failure::Usage("give either --zone and --type, or GPU and price constraints".into()));
                }
                let provider = filters.provider.clone().ok_or_else(|| Failure::Usage("--zone and --type need --provider".into()))?;
                body["provider"] = json!(provider);
                body["zone"] = json!(zone);
                body["instance_type"] = json!(instance_type);
            }
            (None, None) if constrained => {
                let providers: Option<Vec<&str>> =
                    filters.provider.as_deref().map(|list| list.split(',').map(str::trim).collect());
                body["constraints"] = json!({ "gpu_model": filters.gpu, "min_gpus": filters.min_gpus,
                    "min_gpu_memory_gb": filters.min_gpu_memory, "max_hourly_price": filters.max_price,
                    "providers": providers });
            }
            (None, None) => match filters.provider.as_deref() {
                Some(provider) if !provider.contains(',') => body["provider"] = json!(provider),
                _ => return Err(Failure::Usage("say where: --provider P (its cheapest offer), --provider P --zone Z --type T, or --gpu/--max-price".into())),
            },
            _ => return Err(Failure::Usage("--zone and --type go together".into())),
        }
        Ok(body)
    }
}

pub async fn deploy(context: &Context, deploy: &Deploy) -> Outcome {
    let body = deploy.body()?;
    if deploy.dry_run {
        let estimate = context.api.send(Method::POST, "/deployments?dry_run=true", &body).await?;
        if context.output.structured(&estimate) {
            return Ok(());
        }
        let currency = text(&estimate["reporting_currency"]);
        let first = &estimate["placements"][0];
        println!(
            "would place {} x {} on {} {} {} ({} {currency}/h each)",
            estimate["count"],
            text(&estimate["model"]),
            text(&first["provider"]),
            text(&first["zone"]),
            text(&first["instance_type"]),
            money(&first["reporting_hourly_price_micros"]),
        );
        let failover = estimate["placements"].as_array().map_or(0, |placements| placements.len().saturating_sub(1));
        if failover > 0 {
            println!("failing over through {failover} other placement(s)");
        }
        println!(
            "estimated cost: {} {currency} per hour, {} {currency} per month (nothing was created)",
            money(&estimate["hourly_price_micros"]),
            money(&estimate["monthly_price_micros"])
        );
        return Ok(());
    }
    let accepted = context.api.send(Method::POST, "/deployments", &body).await?;
    let ids: Vec<String> = accepted["instance_ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(|id| id.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if !deploy.wait {
        if !context.output.structured(&accepted) {
            println!("deployment {} accepted: {}", text(&accepted["deployment_id"]), ids.join(" "));
        }
        return Ok(());
    }
    let ready = watch::instances(
        &context.api,
        &ids,
        |state| match state {
            "ready" => Verdict::Done,
            "provisioning_failed" | "startup_failed" | "terminating" | "terminated" => Verdict::Failed,
            _ => Verdict::Waiting,
        },
        Duration::from_secs(deploy.timeout),
    )
    .await?;
    if !context.output.structured(&json!({ "deployment_id": accepted["deployment_id"], "instances": ready })) {
        println!("deployment {}: {} instance(s) ready", text(&accepted["deployment_id"]), ready.len());
    }
    Ok(())
}

const INSTANCE_COLUMNS: &[Column] = &[
    Column { header: "ID", cell: |instance| text(&instance["id"]) },
    Column { header: "MODEL", cell: |instance| text(&instance["model"]) },
    Column { header: "STATE", cell: |instance| text(&instance["state"]) },
    Column { header: "PROVIDER", cell: |instance| text(&instance["provider"]) },
    Column { header: "ZONE", cell: |instance| text(&instance["zone"]) },
    Column { header: "TYPE", cell: |instance| text(&instance["instance_type"]) },
    Column { header: "ADDRESS", cell: |instance| text(&instance["address"]) },
    Column { header: "SINCE", cell: |instance| ago(&instance["state_changed_at"]) },
];

#[derive(Args)]
pub struct Ps {
    /// Only instances in this state (ready, provisioning, terminated, ...).
    #[arg(long)]
    pub state: Option<String>,
    /// Include terminated and failed instances.
    #[arg(long, short)]
    pub all: bool,
    /// Keep the listing on screen, redrawn as instances move.
    #[arg(long, short)]
    pub watch: bool,
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
}

async fn listed(context: &Context, ps: &Ps) -> Outcome<Vec<Value>> {
    let path = format!("/instances{}", query(&[("state", ps.state.clone())]));
    let mut instances = context.api.all(&path, ps.limit).await?;
    if !ps.all && ps.state.is_none() {
        instances.retain(|instance| {
            !matches!(instance["state"].as_str(), Some("terminated" | "provisioning_failed" | "startup_failed"))
        });
    }
    Ok(instances)
}

pub async fn ps(context: &Context, ps: &Ps) -> Outcome {
    context.output.list(&listed(context, ps).await?, INSTANCE_COLUMNS);
    if !ps.watch {
        return Ok(());
    }
    let mut feed = watch::Feed::open(&context.api).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), feed.next()).await {
            Ok(Ok(Some((kind, _)))) if kind != "instance.state_changed" => continue,
            Ok(Ok(None) | Err(_)) => feed = watch::Feed::open(&context.api).await?,
            _ => {}
        }
        if context.output.colour {
            print!("\u{1b}[2J\u{1b}[H");
        } else {
            println!();
        }
        context.output.list(&listed(context, ps).await?, INSTANCE_COLUMNS);
    }
}

pub async fn instance(context: &Context, id: &str) -> Outcome {
    let id = segment(id)?;
    let instance = context.api.get(&format!("/instances/{id}")).await?;
    let worker = context.api.get(&format!("/instances/{id}/worker")).await.unwrap_or(Value::Null);
    if context.output.structured(&json!({ "instance": instance, "worker": worker })) {
        return Ok(());
    }
    // Each GPU's last reading, named as the agent registered it.
    let name = |index: &Value| {
        worker["gpus"]
            .as_array()
            .and_then(|gpus| gpus.iter().find(|gpu| gpu["index"] == *index))
            .and_then(|gpu| gpu["name"].as_str())
            .map(|name| format!(" {name}"))
            .unwrap_or_default()
    };
    let gpu = worker["gpu_metrics"]
        .as_array()
        .map(|gpus| {
            gpus.iter()
                .map(|gpu| {
                    format!(
                        "#{}{} {}% util, {}/{} MB",
                        text(&gpu["index"]),
                        name(&gpu["index"]),
                        gpu["utilization_percent"].as_f64().map_or_else(|| "-".into(), |used| format!("{used:.0}")),
                        text(&gpu["memory_used_mb"]),
                        text(&gpu["memory_total_mb"])
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|line| !line.is_empty())
        .unwrap_or_else(|| "-".into());
    let fields = [
        ("id", text(&instance["id"])),
        ("model", text(&instance["model"])),
        ("state", text(&instance["state"])),
        ("since", ago(&instance["state_changed_at"])),
        (
            "placement",
            format!("{} {} {}", text(&instance["provider"]), text(&instance["zone"]), text(&instance["instance_type"])),
        ),
        ("address", text(&instance["address"])),
        ("price", format!("{} {}/h", money(&instance["hourly_price_micros"]), text(&instance["currency"]))),
        ("cost to date", money(&instance["cost_to_date_micros"])),
        ("failure", text(&instance["failure_reason"])),
        (
            "worker",
            format!(
                "{} in flight, {} queued, last heartbeat {}",
                text(&worker["in_flight"]),
                text(&worker["queue_depth"]),
                ago(&worker["last_heartbeat_at"])
            ),
        ),
        ("gpus", gpu),
    ];
    context.output.record(&instance, &fields);
    println!("history:");
    for change in instance["history"].as_array().map_or(&[][..], Vec::as_slice) {
        let reason = change["reason"].as_str().map(|reason| format!(" ({reason})")).unwrap_or_default();
        println!("  {:>8}  {}{reason}", ago(&change["occurred_at"]), text(&change["to_state"]));
    }
    Ok(())
}

#[derive(Args)]
pub struct Down {
    /// Instances to terminate.
    pub ids: Vec<String>,
    /// Every unfinished instance of this deployment.
    #[arg(long)]
    pub deployment: Option<String>,
    /// Follow them until terminated.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

pub async fn down(context: &Context, down: &Down) -> Outcome {
    let mut ids: Vec<String> = down.ids.iter().map(|id| segment(id).map(str::to_owned)).collect::<Outcome<_>>()?;
    if let Some(deployment) = &down.deployment {
        let deployment = context.api.get(&format!("/deployments/{}", segment(deployment)?)).await?;
        for instance in deployment["instances"].as_array().map_or(&[][..], Vec::as_slice) {
            if !matches!(
                instance["state"].as_str(),
                Some("terminated" | "terminating" | "provisioning_failed" | "startup_failed")
            ) {
                ids.extend(instance["id"].as_str().map(str::to_owned));
            }
        }
    }
    if ids.is_empty() {
        return Err(Failure::Usage("name instances to terminate, or --deployment D".into()));
    }
    for id in &ids {
        context.api.call(context.api.request(Method::DELETE, &format!("/instances/{id}"))).await?;
        if !down.wait {
            eprintln!("{id} terminating");
        }
    }
    if down.wait {
        watch::instances(
            &context.api,
            &ids,
            |state| if state == "terminated" { Verdict::Done } else { Verdict::Waiting },
            Duration::from_secs(down.timeout),
        )
        .await?;
        println!("{} instance(s) terminated", ids.len());
    }
    Ok(())
}

/// `qm events [-f]`: the events the feed still holds, then (`-f`) new ones as they come.
pub async fn events(context: &Context, follow: bool) -> Outcome {
    let mut feed = watch::Feed::open_at(&context.api, "/events?after=0").await?;
    loop {
        // Without `-f`, the replay is over when the feed falls silent.
        let next = if follow {
            feed.next().await?
        } else {
            match tokio::time::timeout(Duration::from_secs(1), feed.next()).await {
                Ok(next) => next?,
                Err(_) => return Ok(()),
            }
        };
        let Some((kind, envelope)) = next else { return Ok(()) };
        match context.output.format {
            super::output::Format::Table => {
                let data = &envelope["data"];
                let subject = data["instance_id"].as_str().or_else(|| data["pool_id"].as_str()).unwrap_or("");
                let detail = match kind.as_str() {
                    "instance.state_changed" => format!("{} → {}", text(&data["from"]), text(&data["to"])),
                    _ => String::new(),
                };
                println!("{}  {kind:<28} {subject} {detail}", text(&envelope["occurred_at"]));
            }
            _ => println!("{}", serde_json::to_string(&envelope).unwrap_or_default()),
        }
    }
}

#[derive(Args)]
pub struct Logs {
    /// Only this action (deployment.create, instance.terminate, pool.scaled, ...).
    #[arg(long)]
    pub action: Option<String>,
    /// succeeded or failed.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub instance: Option<String>,
    /// api, orchestrator, finops, ...
    #[arg(long)]
    pub component: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

const LOG_COLUMNS: &[Column] = &[
    Column { header: "WHEN", cell: |entry| ago(&entry["created_at"]) },
    Column { header: "COMPONENT", cell: |entry| text(&entry["component"]) },
    Column { header: "ACTION", cell: |entry| text(&entry["action_type"]) },
    Column { header: "STATUS", cell: |entry| text(&entry["status"]) },
    Column { header: "INSTANCE", cell: |entry| text(&entry["instance_id"]) },
    Column { header: "ERROR", cell: |entry| text(&entry["error"]) },
];

pub async fn logs(context: &Context, logs: &Logs) -> Outcome {
    let path = format!(
        "/action_logs{}",
        query(&[
            ("action_type", logs.action.clone()),
            ("status", logs.status.clone()),
            ("instance_id", logs.instance.clone()),
            ("component", logs.component.clone()),
        ])
    );
    let entries = context.api.all(&path, logs.limit).await?;
    context.output.list(&entries, LOG_COLUMNS);
    Ok(())
}

#[derive(Subcommand)]
pub enum Pools {
    /// The pools, with their size and status.
    Ls,
    /// One pool, its status, decisions and replicas.
    Get { id: String },
    /// A pool of MODEL at --provider/--zone/--type with --min..--max replicas.
    Create {
        model: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        provider: String,
        #[arg(long)]
        zone: String,
        #[arg(long = "type")]
        instance_type: String,
        #[arg(long, default_value_t = 1)]
        min: u32,
        #[arg(long, default_value_t = 1)]
        max: u32,
        /// An engine argument (repeatable), e.g. --engine-arg=--max-model-len --engine-arg=8192.
        #[arg(long = "engine-arg", allow_hyphen_values = true)]
        engine_args: Vec<String>,
    },
    /// New bounds.
    Scale {
        id: String,
        #[arg(long)]
        min: Option<u32>,
        #[arg(long)]
        max: Option<u32>,
    },
    /// A new model, engine arguments or placement (--provider P [--zone Z --type T]): a
    /// rolling update.
    Update {
        id: String,
        #[arg(long)]
        model: Option<String>,
        #[arg(long = "engine-arg", allow_hyphen_values = true)]
        engine_args: Option<Vec<String>>,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long, requires = "provider")]
        zone: Option<String>,
        #[arg(long = "type", requires = "zone")]
        instance_type: Option<String>,
    },
    /// Delete a pool (its replicas drain and terminate).
    Rm { id: String },
}

const POOL_COLUMNS: &[Column] = &[
    Column { header: "ID", cell: |pool| text(&pool["id"]) },
    Column { header: "NAME", cell: |pool| text(&pool["name"]) },
    Column { header: "MODEL", cell: |pool| text(&pool["model"]) },
    Column { header: "MIN", cell: |pool| text(&pool["min_replicas"]) },
    Column { header: "MAX", cell: |pool| text(&pool["max_replicas"]) },
    Column { header: "DESIRED", cell: |pool| text(&pool["desired"]) },
    Column { header: "READY", cell: |pool| text(&pool["status"]["ready"]) },
    Column { header: "REV", cell: |pool| text(&pool["revision"]) },
    Column { header: "HOURLY", cell: |pool| money(&pool["status"]["hourly_price_micros"]) },
];

pub async fn pools(context: &Context, command: &Pools) -> Outcome {
    let api = &context.api;
    let pool = match command {
        Pools::Ls => {
            let pools = api.all("/pools", 500).await?;
            context.output.list(&pools, POOL_COLUMNS);
            return Ok(());
        }
        Pools::Get { id } => api.get(&format!("/pools/{}", segment(id)?)).await?,
        Pools::Create { model, name, provider, zone, instance_type, min, max, engine_args } => {
            let body = json!({ "model": model, "name": name, "provider": provider, "zone": zone,
                "instance_type": instance_type, "min_replicas": min, "max_replicas": max,
                "engine": { "args": engine_args } });
            api.send(Method::POST, "/pools", &body).await?
        }
        Pools::Scale { id, min, max } => {
            let body = json!({ "min_replicas": min, "max_replicas": max });
            api.send(Method::PATCH, &format!("/pools/{}", segment(id)?), &body).await?
        }
        Pools::Update { id, model, engine_args, provider, zone, instance_type } => {
            let mut body =
                json!({ "model": model, "provider": provider, "zone": zone, "instance_type": instance_type });
            if let Some(args) = engine_args {
                body["engine"] = json!({ "args": args });
            }
            api.send(Method::PATCH, &format!("/pools/{}", segment(id)?), &body).await?
        }
        Pools::Rm { id } => {
            api.call(api.request(Method::DELETE, &format!("/pools/{}", segment(id)?))).await?;
            println!("pool {id} deleted; its replicas drain and terminate");
            return Ok(());
        }
    };
    if context.output.structured(&pool) {
        return Ok(());
    }
    context.output.list(std::slice::from_ref(&pool), POOL_COLUMNS);
    let status = &pool["status"];
    for condition in status["conditions"].as_array().map_or(&[][..], Vec::as_slice) {
        println!("condition {}: {}", text(&condition["type"]), text(&condition["message"]));
    }
    for decision in status["decisions"].as_array().map_or(&[][..], Vec::as_slice).iter().take(5) {
        println!(
            "{:>8}  {} → {}: {}",
            ago(&decision["at"]),
            decision["from"],
            decision["to"],
            text(&decision["reason"])
        );
    }
    if let Some(replicas) = pool["instances"].as_array() {
        println!();
        context.output.list(replicas, INSTANCE_COLUMNS);
    }
    Ok(())
}
