//! Catalog, deployments, instances, action logs and the live event stream, driven over HTTP on
//! SQLite and PostgreSQL, with the commands checked on the bus.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Api;
use qm_events::{Channel, Envelope};
use serde_json::{Value, json};

on_both_backends!(
    the_catalog_is_readable_by_all_and_written_by_the_platform_admin,
    deployments_are_validated_against_the_catalog,
    a_deployment_queues_provision_commands_on_the_bus,
    constraints_pick_the_cheapest_matching_offers,
    instances_are_listed_filtered_terminated_and_archived,
    organizations_never_see_each_others_fleet,
    action_logs_are_searchable_with_counts_and_cursors,
    the_event_stream_is_live_and_resumable,
);

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
}

async fn the_catalog_is_readable_by_all_and_written_by_the_platform_admin(api: Arc<Api>) {
    let platform = api.admin().await;
    let viewer = api.member(&platform, "vic", "viewer").await;
    let providers = api.get("/providers", &viewer).await.expect(200);
    let names: Vec<_> = providers["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["aws", "local", "scaleway", "sim"]);
    let regions = api.get("/regions?provider=scaleway", &viewer).await.expect(200);
    assert!(regions["items"].as_array().unwrap().iter().any(|region| region["code"] == "fr-par"));
    let zones = api.get("/zones?provider=scaleway", &viewer).await.expect(200);
    let fr_par_2 = zones["items"].as_array().unwrap().iter().find(|zone| zone["code"] == "fr-par-2").unwrap().clone();
    let offered =
        api.get(&format!("/zones/{}/instance_types", fr_par_2["id"].as_str().unwrap()), &viewer).await.expect(200);
    let codes: Vec<_> = offered["items"].as_array().unwrap().iter().map(|t| t["code"].as_str().unwrap()).collect();
    assert!(codes.contains(&"L4-1-24G") && codes.contains(&"H100-1-80G"), "{codes:?}");
    let h100 = offered["items"].as_array().unwrap().iter().find(|t| t["code"] == "H100-1-80G").unwrap().clone();
    assert_eq!(
        (h100["gpu_model"].as_str(), h100["gpu_memory_gb"].as_i64(), h100["currency"].as_str()),
        (Some("H100"), Some(80), Some("EUR"))
    );
    assert_eq!(h100["hourly_price_micros"], 2_730_000);

    // The platform admin creates a region, a zone and a type, and says where the type is offered.
    let region_id = uuid::Uuid::now_v7();
    let zone_id = uuid::Uuid::now_v7();
    let type_id = uuid::Uuid::now_v7();
    api.put(
        &format!("/regions/{region_id}"),
        &platform,
        json!({ "provider": "sim", "code": "sim-ap", "name": "Sim Asia", "active": true }),
    )
    .await
    .expect(200);
    api.put(
        &format!("/zones/{zone_id}"),
        &platform,
        json!({ "region_id": region_id, "code": "sim-ap-1", "name": "Sim Asia 1", "active": true }),
    )
    .await
    .expect(200);
    let created = api
        .put(
            &format!("/instance_types/{type_id}"),
            &platform,
            json!({ "provider": "sim", "code": "sim.a100", "gpu_model": "A100", "gpu_count": 1, "gpu_memory_gb": 40, "vcpus": 12, "memory_gb": 85, "hourly_price_micros": 1_500_000, "currency": "EUR", "active": true }),
        )
        .await
        .expect(200);
    assert_eq!(created["code"], "sim.a100");
    let replaced = api
        .put(&format!("/instance_types/{type_id}/zones"), &platform, json!({ "zone_ids": [zone_id] }))
        .await
        .expect(200);
    assert_eq!(ids(&replaced), [zone_id.to_string()]);
    assert_eq!(
        ids(&api.get(&format!("/instance_types/{type_id}/zones"), &viewer).await.expect(200)),
        [zone_id.to_string()]
    );

    // Updating in place keeps the id; replacing zones is a full replacement.
    api.put(
        &format!("/regions/{region_id}"),
        &platform,
        json!({ "provider": "sim", "code": "sim-ap", "name": "Renamed", "active": true }),
    )
    .await
    .expect(200);
    assert_eq!(api.get(&format!("/regions/{region_id}"), &viewer).await.expect(200)["name"], "Renamed");
    let emptied =
        api.put(&format!("/instance_types/{type_id}/zones"), &platform, json!({ "zone_ids": [] })).await.expect(200);
    assert!(ids(&emptied).is_empty());

    // Bad input names the field; another provider's zone is refused; org admins cannot write.
    let aws_zone =
        api.get("/zones?provider=aws", &viewer).await.expect(200)["items"][0]["id"].as_str().unwrap().to_owned();
    let refused = api
        .put(&format!("/instance_types/{type_id}/zones"), &platform, json!({ "zone_ids": [zone_id, aws_zone] }))
        .await
        .expect(422);
    assert_eq!(refused["errors"][0]["field"], "zone_ids[1]");
    let bad_type = json!({ "provider": "sim", "code": "x", "gpu_count": 2, "gpu_memory_gb": 0, "vcpus": 0, "memory_gb": 1, "hourly_price_micros": -1, "currency": "euro", "active": true });
    let refused = api.put(&format!("/instance_types/{type_id}"), &platform, bad_type).await.expect(422);
    let fields: Vec<_> =
        refused["errors"].as_array().unwrap().iter().map(|error| error["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["vcpus", "hourly_price_micros", "gpu_model", "currency"]);
    api.put(
        &format!("/regions/{region_id}"),
        &platform,
        json!({ "provider": "nimbus", "code": "x", "name": "x", "active": true }),
    )
    .await
    .expect(422);
    api.put("/providers/nimbus", &platform, json!({ "display_name": "x", "active": true })).await.expect(422);
    api.put(
        &format!("/zones/{}", uuid::Uuid::now_v7()),
        &platform,
        json!({ "region_id": uuid::Uuid::now_v7(), "code": "x", "name": "x", "active": true }),
    )
    .await
    .expect(422);
    let (_, org_admin) = api.organization(&platform, "tenant").await;
    api.put("/providers/sim", &org_admin, json!({ "display_name": "x", "active": false })).await.expect(403);
    api.get(&format!("/regions/{}", uuid::Uuid::now_v7()), &viewer).await.expect(404);
    api.get("/providers/nimbus", &viewer).await.expect(404);

    // Sync goes to the orchestrator as a command.
    let accepted = api.post("/catalog/sync", &viewer, json!({})).await;
    assert_eq!(accepted.status, 403);
    let operator = api.member(&platform, "opal", "operator").await;
    let accepted = api.post("/catalog/sync", &operator, json!({ "provider": "aws" })).await.expect(202);
    api.post("/catalog/sync", &operator, json!({ "provider": "nimbus" })).await.expect(422);
    let sync = api.call("POST", "/catalog/sync", Some(&operator), None).await.expect(202);
    let reconcile = api.call("POST", "/fleet/reconcile", Some(&operator), None).await.expect(202);
    let commands = commands(&api, 3).await;
    let ids: Vec<_> = commands.iter().map(|command| command.id.to_string()).collect();
    for accepted in [&accepted, &sync, &reconcile] {
        assert!(ids.contains(&accepted["command_id"].as_str().unwrap().to_owned()));
    }
    let types: Vec<_> = commands.iter().map(|command| command.message_type.as_str()).collect();
    assert_eq!(types, ["catalog.sync", "catalog.sync", "fleet.reconcile"]);
    assert_eq!(commands[0].data["provider"], "aws");
}

/// The next `count` commands the orchestrator's consumer group receives.
async fn commands(api: &Api, count: usize) -> Vec<Envelope> {
    let options = qm_bus::SubscriptionOptions::new(Channel::Commands, "orchestrator");
    let mut subscription = api.bus.subscribe(options).await.unwrap();
    let mut received = Vec::new();
    while received.len() < count {
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the relay publishes the commands")
            .unwrap();
        received.push(delivery.envelope.clone());
        delivery.ack().await.unwrap();
    }
    received
}

async fn deployments_are_validated_against_the_catalog(api: Arc<Api>) {
    let platform = api.admin().await;
    let base =
        json!({ "model": "m", "count": 1, "provider": "scaleway", "zone": "fr-par-2", "instance_type": "L4-1-24G" });
    let with = |changes: Value| {
        let mut request = base.clone();
        for (key, value) in changes.as_object().unwrap() {
            if value.is_null() {
                request.as_object_mut().unwrap().remove(key);
            } else {
                request[key] = value.clone();
            }
        }
        request
    };
    let field_of = |body: &Value| body["errors"][0]["field"].as_str().unwrap_or_default().to_owned();
    let cases = [
        (json!({ "provider": "nimbus" }), "provider"),
        (json!({ "zone": "mars-1" }), "zone"),
        (json!({ "instance_type": "X-1" }), "instance_type"),
        (json!({ "zone": "fr-par-1" }), "instance_type"),
        (json!({ "zone": null }), "zone"),
        (json!({ "instance_type": null }), "instance_type"),
        (json!({ "provider": null, "zone": null, "instance_type": null }), "zone"),
        (json!({ "count": 0 }), "count"),
        (json!({ "count": 101 }), "count"),
        (json!({ "model": "  " }), "model"),
        (
            json!({ "failover": [{ "provider": "aws", "zone": "us-east-1a", "instance_type": "RENDER-S" }] }),
            "failover[0].instance_type",
        ),
        (json!({ "constraints": { "gpu_model": "L4" } }), "constraints"),
        (json!({ "zone": null, "instance_type": null, "constraints": { "gpu_model": "TPU" } }), "constraints"),
        (
            json!({ "zone": null, "instance_type": null, "constraints": { "max_hourly_price": "cheap" } }),
            "constraints.max_hourly_price",
        ),
        (json!({ "zone": null, "instance_type": null, "constraints": { "min_gpus": -1 } }), "constraints.min_gpus"),
    ];
    for (changes, field) in cases {
        let response = api.post("/deployments", &platform, with(changes.clone())).await.expect(422);
        assert_eq!(field_of(&response), field, "{changes}: {response}");
    }
    // An inactive type, zone or provider is refused, naming it.
    let h100 = api.get("/instance_types?provider=scaleway", &platform).await.expect(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["code"] == "L4-1-24G")
        .unwrap()
        .clone();
    let mut inactive = h100.clone();
    inactive["active"] = json!(false);
    for key in ["id", "created_at", "updated_at"] {
        inactive.as_object_mut().unwrap().remove(key);
    }
    api.put(&format!("/instance_types/{}", h100["id"].as_str().unwrap()), &platform, inactive).await.expect(200);
    let refused = api.post("/deployments", &platform, base.clone()).await.expect(422);
    assert_eq!(field_of(&refused), "instance_type");
    assert!(refused["detail"].as_str().unwrap().contains("inactive"));
    api.put("/providers/aws", &platform, json!({ "display_name": "AWS", "active": false })).await.expect(200);
    let refused = api
        .post(
            "/deployments",
            &platform,
            json!({ "model": "m", "count": 1, "provider": "aws", "zone": "us-east-1a", "instance_type": "g5.xlarge" }),
        )
        .await
        .expect(422);
    assert_eq!(field_of(&refused), "provider");
    // Nothing was recorded by any refused request.
    assert!(api.get("/instances", &platform).await.expect(200)["items"].as_array().unwrap().is_empty());
    assert!(api.get("/deployments", &platform).await.expect(200)["items"].as_array().unwrap().is_empty());
    // A provider alone takes its cheapest offers; a dry run places and prices without creating.
    let alone = json!({ "model": "m", "count": 1, "provider": "scaleway" });
    let count = |page: Value| page["items"].as_array().map_or(0, Vec::len);
    let before = count(api.get("/instances", &platform).await.expect(200));
    let estimate = api.post("/deployments?dry_run=true", &platform, alone.clone()).await.expect(200);
    assert_eq!(count(api.get("/instances", &platform).await.expect(200)), before, "a dry run creates nothing");
    let placements = estimate["placements"].as_array().unwrap();
    let prices: Vec<i64> = placements.iter().map(|offer| offer["hourly_price_micros"].as_i64().unwrap()).collect();
    assert!(prices.windows(2).all(|pair| pair[0] <= pair[1]), "cheapest first: {estimate}");
    assert!(placements.iter().all(|offer| offer["provider"] == "scaleway"), "{estimate}");
    assert_eq!(estimate["hourly_price_micros"], estimate["placements"][0]["reporting_hourly_price_micros"]);
    let accepted = api.post("/deployments", &platform, alone).await.expect(202);
    assert_eq!(accepted["placements"][0]["instance_type"], estimate["placements"][0]["instance_type"]);
}

async fn a_deployment_queues_provision_commands_on_the_bus(api: Arc<Api>) {
    let platform = api.admin().await;
    let request = json!({
        "model": "llama", "count": 2, "provider": "scaleway", "zone": "fr-par-2", "instance_type": "L4-1-24G",
        "failover": [{ "provider": "aws", "zone": "eu-west-1a", "instance_type": "g6.xlarge" }],
    });
    let accepted = api.post("/deployments", &platform, request).await.expect(202);
    let instance_ids: Vec<String> =
        accepted["instance_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect();
    assert_eq!(instance_ids.len(), 2);
    let placements: Vec<_> = accepted["placements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["provider"].as_str().unwrap().to_owned(), p["zone"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        placements,
        [("scaleway".to_owned(), "fr-par-2".to_owned()), ("aws".to_owned(), "eu-west-1a".to_owned())]
    );

    let provisions = commands(&api, 2).await;
    for command in &provisions {
        assert_eq!(command.message_type, "instance.provision");
        assert_eq!(command.source, "api");
        assert!(command.traceparent.is_some(), "the trace follows the command");
        assert_eq!(command.data["model"], "llama");
        assert_eq!(command.data["placements"].as_array().unwrap().len(), 2);
        assert!(instance_ids.contains(&command.data["instance_id"].as_str().unwrap().to_owned()));
    }
    let deployment_id = accepted["deployment_id"].as_str().unwrap();
    let deployment = api.get(&format!("/deployments/{deployment_id}"), &platform).await.expect(200);
    assert_eq!(deployment["count"], 2);
    assert_eq!(deployment["instances"].as_array().unwrap().len(), 2);
    assert!(
        deployment["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|instance| instance["state"] == "requested" && instance["zone"] == "fr-par-2")
    );
    assert_eq!(ids(&api.get("/deployments", &platform).await.expect(200)), [deployment_id]);
    api.get(&format!("/deployments/{}", uuid::Uuid::now_v7()), &platform).await.expect(404);
}

async fn constraints_pick_the_cheapest_matching_offers(api: Arc<Api>) {
    let platform = api.admin().await;
    // L4 offers: sim.l4 0.70 EUR, scaleway L4-1-24G 0.75 EUR, aws g6.xlarge 0.8048 USD (0.74 EUR).
    let request = json!({ "model": "m", "count": 1, "constraints": { "gpu_model": "l4", "min_gpu_memory_gb": 24, "providers": ["aws", "scaleway"] } });
    let accepted = api.post("/deployments", &platform, request).await.expect(202);
    let placements = accepted["placements"].as_array().unwrap();
    assert_eq!(placements[0]["provider"], "aws", "0.74 EUR beats 0.75 EUR: {placements:?}");
    assert_eq!(placements[0]["instance_type"], "g6.xlarge");
    let order: Vec<_> = placements.iter().map(|p| p["instance_type"].as_str().unwrap()).collect();
    let position = |code: &str| order.iter().position(|candidate| *candidate == code).unwrap();
    assert!(position("g6.xlarge") < position("L4-1-24G") && position("L4-1-24G") < position("L4-2-24G"), "{order:?}");
    assert!(placements.iter().all(|p| p["provider"] != "sim"));

    let cheap = json!({ "model": "m", "count": 1, "constraints": { "gpu_model": "L4", "max_hourly_price": "0.72" } });
    let accepted = api.post("/deployments", &platform, cheap).await.expect(202);
    let placements = accepted["placements"].as_array().unwrap();
    assert!(placements.iter().all(|p| p["instance_type"] == "sim.l4"), "{placements:?}");
    let instance = accepted["instance_ids"][0].as_str().unwrap();
    assert_eq!(api.get(&format!("/instances/{instance}"), &platform).await.expect(200)["instance_type"], "sim.l4");

    let big = json!({ "model": "m", "count": 1, "constraints": { "min_gpus": 8, "min_gpu_memory_gb": 80 } });
    let accepted = api.post("/deployments", &platform, big).await.expect(202);
    assert_eq!(accepted["placements"][0]["instance_type"], "p5.48xlarge");
}

async fn instances_are_listed_filtered_terminated_and_archived(api: Arc<Api>) {
    let platform = api.admin().await;
    let operator = api.member(&platform, "ops", "operator").await;
    let instances = api.deploy(&operator, 3).await;
    let listed = api.get("/instances?limit=2", &operator).await.expect(200);
    let first_page = ids(&listed);
    assert_eq!(first_page, [instances[2].clone(), instances[1].clone()], "newest first");
    let cursor = listed["next_cursor"].as_str().unwrap();
    assert_eq!(cursor, instances[1], "the cursor is the last instance shown");
    // The page is written straight from the rows: the same JSON as the instances read the usual way.
    let organization = listed["items"][0]["organization_id"].as_str().unwrap().parse().unwrap();
    let filter = qm_store::InstanceFilter {
        organization: Some(organization),
        archived: Some(false),
        limit: 2,
        ..qm_store::InstanceFilter::default()
    };
    assert_eq!(listed["items"], serde_json::to_value(api.store.instances(&filter).await.unwrap()).unwrap());
    let second = api.get(&format!("/instances?limit=2&cursor={cursor}"), &operator).await.expect(200);
    assert_eq!(ids(&second), [instances[0].clone()]);
    assert!(second["next_cursor"].is_null());
    assert_eq!(
        ids(&api.get("/instances?state=requested&provider=sim&zone=sim-eu-1", &operator).await.expect(200)).len(),
        3
    );
    assert!(ids(&api.get("/instances?provider=aws", &operator).await.expect(200)).is_empty());
    assert!(ids(&api.get("/instances?state=ready", &operator).await.expect(200)).is_empty());
    api.get("/instances?state=exploded", &operator).await.expect(400);

    // Terminate: requested → terminating, with a command and the history to show it.
    let target = &instances[0];
    let terminating = api.delete(&format!("/instances/{target}"), &operator).await.expect(202);
    assert_eq!(terminating["state"], "terminating");
    let again = api.delete(&format!("/instances/{target}"), &operator).await.expect(202);
    assert_eq!(again["state"], "terminating", "asking twice changes nothing");
    let detail = api.get(&format!("/instances/{target}"), &operator).await.expect(200);
    let history: Vec<_> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| (change["from_state"].clone(), change["to_state"].clone()))
        .collect();
    assert_eq!(history, [(Value::Null, json!("requested")), (json!("requested"), json!("terminating"))]);
    assert_eq!(detail["progress_percent"], 0);
    let sent = commands(&api, 4).await;
    let terminate =
        sent.iter().find(|command| command.message_type == "instance.terminate").expect("terminate command");
    assert_eq!(terminate.data["instance_id"], target.as_str());

    // Archive only what is finished.
    let refused = api.call("PUT", &format!("/instances/{target}/archive"), Some(&operator), None).await.expect(409);
    assert!(refused["detail"].as_str().unwrap().contains("terminating"));
    let id: qm_domain::InstanceId = target.parse().unwrap();
    let mut tx = api.store.begin().await.unwrap();
    let transition = qm_store::Transition {
        instance: id,
        from: qm_domain::InstanceState::Terminating,
        to: qm_domain::InstanceState::Terminated,
        reason: None,
        progress_percent: None,
    };
    tx.transition_instance(&transition).await.unwrap().expect("terminated");
    tx.commit().await.unwrap();
    api.delete(&format!("/instances/{target}"), &operator).await.expect(409);
    let archived = api.call("PUT", &format!("/instances/{target}/archive"), Some(&operator), None).await.expect(200);
    assert_eq!(archived["archived"], true);
    assert_eq!(
        ids(&api.get("/instances", &operator).await.expect(200)).len(),
        2,
        "archived ones leave the default list"
    );
    assert_eq!(ids(&api.get("/instances?archived=true", &operator).await.expect(200)), std::slice::from_ref(target));
    api.get(&format!("/instances/{}", uuid::Uuid::now_v7()), &operator).await.expect(404);
}

async fn organizations_never_see_each_others_fleet(api: Arc<Api>) {
    let platform = api.admin().await;
    let instance = api.deploy(&platform, 1).await.remove(0);
    let deployment =
        api.get("/deployments", &platform).await.expect(200)["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, other) = api.organization(&platform, "other").await;
    api.get(&format!("/instances/{instance}"), &other).await.expect(404);
    api.delete(&format!("/instances/{instance}"), &other).await.expect(404);
    api.call("PUT", &format!("/instances/{instance}/archive"), Some(&other), None).await.expect(404);
    api.get(&format!("/deployments/{deployment}"), &other).await.expect(404);
    assert!(ids(&api.get("/instances", &other).await.expect(200)).is_empty());
    assert!(ids(&api.get("/deployments", &other).await.expect(200)).is_empty());
    let logs = api.get("/action_logs", &other).await.expect(200);
    assert!(logs["items"].as_array().unwrap().iter().all(|entry| entry["action_type"] != "deployment.create"));
    let filtered = api.get(&format!("/action_logs?instance_id={instance}"), &other).await.expect(200);
    assert!(ids(&filtered).is_empty());
    // The instance is untouched.
    assert_eq!(api.get(&format!("/instances/{instance}"), &platform).await.expect(200)["state"], "requested");
}

async fn action_logs_are_searchable_with_counts_and_cursors(api: Arc<Api>) {
    let platform = api.admin().await;
    let instances = api.deploy(&platform, 2).await;
    api.delete(&format!("/instances/{}", instances[0]), &platform).await.expect(202);
    api.post("/api_keys", &platform, json!({ "name": "k" })).await.expect(201);

    let all = api.get("/action_logs", &platform).await.expect(200);
    let types: Vec<_> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        &types[..4],
        ["api_key.create", "instance.terminate", "deployment.create", "auth.login"],
        "newest first"
    );
    let terminate = &all["items"][1];
    assert_eq!(terminate["instance_id"], instances[0].as_str());
    assert_eq!(terminate["status"], "succeeded");
    assert!(terminate["duration_ms"].as_i64().is_some());
    assert!(terminate["user_id"].is_string());

    let search = api.get("/action_logs/search?limit=2&component=api", &platform).await.expect(200);
    assert_eq!(search["items"].as_array().unwrap().len(), 2);
    assert_eq!(search["counts"]["total"], all["items"].as_array().unwrap().len());
    assert_eq!(search["counts"]["by_type"]["deployment.create"], 1);
    assert_eq!(search["counts"]["by_status"]["succeeded"], search["counts"]["total"]);
    let cursor = search["next_cursor"].as_str().unwrap();
    let next =
        api.get(&format!("/action_logs/search?limit=2&component=api&cursor={cursor}"), &platform).await.expect(200);
    assert_eq!(next["items"][0]["action_type"], "deployment.create");
    assert_eq!(next["counts"]["total"], search["counts"]["total"], "counts ignore the cursor");

    let by_instance = api.get(&format!("/action_logs?instance_id={}", instances[0]), &platform).await.expect(200);
    assert_eq!(by_instance["items"].as_array().unwrap().len(), 1);
    let by_type = api.get("/action_logs/search?action_type=auth.login&status=succeeded", &platform).await.expect(200);
    assert_eq!(by_type["counts"]["total"], 1);
    let future = api.get("/action_logs/search?since=2999-01-01T00:00:00Z", &platform).await.expect(200);
    assert_eq!(future["counts"]["total"], 0);
    api.get("/action_logs?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z", &platform).await.expect(422);
    api.get("/action_logs?status=maybe", &platform).await.expect(400);
    api.get("/action_logs?cursor=nonsense", &platform).await.expect(422);

    // Every type written so far is in the catalogue, with a label.
    let catalogue = api.get("/action_types", &platform).await.expect(200);
    let known: Vec<_> =
        catalogue["items"].as_array().unwrap().iter().map(|entry| entry["type"].as_str().unwrap().to_owned()).collect();
    for logged in api.store.action_logs(None, 500).await.unwrap() {
        assert!(known.contains(&logged.action_type), "{} is not in /action_types", logged.action_type);
    }
}

/// Reads server-sent events until `count` arrived; returns (id, type, data).
async fn read_events(response: reqwest::Response, count: usize) -> Vec<(i64, String, Value)> {
    use futures::StreamExt as _;
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field =
                |name: &str| block.lines().find_map(|line| line.strip_prefix(&format!("{name}: ")).map(str::to_owned));
            if let (Some(id), Some(kind), Some(data)) = (field("id"), field("event"), field("data")) {
                events.push((id.parse().unwrap(), kind, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

async fn the_event_stream_is_live_and_resumable(api: Arc<Api>) {
    let platform = api.admin().await;
    let (_, other) = api.organization(&platform, "other").await;
    let other_stream = api.client.get(api.url("/events")).bearer_auth(&other).send().await.unwrap();
    let stream = api.client.get(api.url("/events")).bearer_auth(&platform).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");

    let instances = api.deploy(&platform, 1).await;
    api.delete(&format!("/instances/{}", instances[0]), &platform).await.expect(202);
    let events = read_events(stream, 2).await;
    assert!(events.iter().all(|(_, kind, _)| kind == "instance.state_changed"));
    assert_eq!(events[0].2["data"]["to"], "requested");
    assert_eq!(events[1].2["data"]["from"], "requested");
    assert_eq!(events[1].2["data"]["to"], "terminating");
    assert_eq!(events[1].2["data"]["instance_id"], instances[0].as_str());

    // Resuming after the first event replays the second; `?after=` does the same.
    let resumed = api
        .client
        .get(api.url("/events"))
        .bearer_auth(&platform)
        .header("last-event-id", events[0].0.to_string())
        .send()
        .await
        .unwrap();
    let replay = read_events(resumed, 1).await;
    assert_eq!(replay[0].0, events[1].0);
    let resumed =
        api.client.get(api.url(&format!("/events?after={}", events[0].0))).bearer_auth(&platform).send().await.unwrap();
    assert_eq!(read_events(resumed, 1).await[0].0, events[1].0);

    // The other organization saw none of it: its first event is its own.
    let own = api.deploy(&other, 1).await;
    let seen = read_events(other_stream, 1).await;
    assert_eq!(seen[0].2["data"]["instance_id"], own[0].as_str());
    assert_eq!(
        api.client
            .get(api.url("/events"))
            .bearer_auth(&platform)
            .header("last-event-id", "x")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(api.client.get(api.url("/events")).send().await.unwrap().status(), 401);
}
