//! The catalogue of action log types: every `action_type` a component writes, with the label a
//! person reads (served by `GET /action_types`).

/// One kind of action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActionType {
    pub name: &'static str,
    pub component: &'static str,
    pub label: &'static str,
}

const fn action(name: &'static str, component: &'static str, label: &'static str) -> ActionType {
    ActionType { name, component, label }
}

pub const ACTION_TYPES: &[ActionType] = &[
    action("admin.bootstrap", "api", "Platform admin created"),
    action("auth.login", "api", "Logged in"),
    action("auth.logout", "api", "Logged out"),
    action("user.update_self", "api", "Own account updated"),
    action("user.change_password", "api", "Own password changed"),
    action("user.create", "api", "User created"),
    action("user.update", "api", "User updated"),
    action("user.delete", "api", "User deleted"),
    action("organization.create", "api", "Organization created"),
    action("organization.update", "api", "Organization updated"),
    action("organization.delete", "api", "Organization deleted"),
    action("api_key.create", "api", "API key created"),
    action("api_key.revoke", "api", "API key revoked"),
    action("catalog.provider.put", "api", "Provider saved"),
    action("catalog.region.put", "api", "Region saved"),
    action("catalog.zone.put", "api", "Zone saved"),
    action("catalog.instance_type.put", "api", "Instance type saved"),
    action("catalog.instance_type.zones.put", "api", "Zones of an instance type replaced"),
    action("catalog.seed", "api", "Catalog seed applied"),
    action("catalog.sync", "api", "Catalog sync requested"),
    action("fleet.reconcile", "api", "Reconciliation requested"),
    action("deployment.create", "api", "Deployment requested"),
    action("pool.create", "api", "Pool created"),
    action("pool.update", "api", "Pool bounds or policy changed"),
    action("pool.delete", "api", "Pool deleted"),
    action("pool.scaled", "orchestrator", "Pool size changed by its controller"),
    action("pool.replaced", "orchestrator", "Pool replica replaced"),
    action("pool.drained", "orchestrator", "Pool replica drained for scale-in"),
    action("instance.terminate", "api", "Termination requested"),
    action("instance.archive", "api", "Instance archived"),
    action("worker.register", "api", "Worker agent registration"),
    action("worker.heartbeat_refused", "api", "Heartbeat refused (token of another instance)"),
    action("worker.token_rotated", "api", "Worker token rotated"),
    action("worker.revoke", "api", "Worker tokens revoked"),
    action("instance.ready", "api", "Worker reported ready"),
    action("instance.unhealthy", "api", "Worker reported not ready"),
    action("instance.provisioning", "orchestrator", "Provisioning started"),
    action("instance.failover", "orchestrator", "Failed over to the next placement"),
    action("instance.booting", "orchestrator", "Provider instance running; booting"),
    action("instance.compensate", "orchestrator", "Created instance terminated after a failure"),
    action("instance.start_failed", "orchestrator", "Could not start for capacity; removed, next placement"),
    action("instance.provisioning_failed", "orchestrator", "Provisioning failed"),
    action("instance.terminated", "orchestrator", "Terminated at the provider"),
    action("instance.startup_failed", "orchestrator", "Not ready within the startup deadline"),
    action("instance.terminating", "orchestrator", "Termination started by the orchestrator"),
    action("instance.terminate_retried", "orchestrator", "Termination stuck past its deadline; command issued again"),
    action("fleet.leftover_removed", "orchestrator", "Leftover of a finished instance removed at the provider"),
    action("fleet.orphan_terminated", "orchestrator", "Orphan terminated at the provider"),
    action("catalog.synced", "orchestrator", "Catalog synced from the provider's offers"),
    action("budget.threshold_crossed", "finops", "Budget threshold crossed"),
    action("finops.budget.put", "api", "Budget saved"),
    action("finops.budget.delete", "api", "Budget removed"),
    action("finops.exchange_rate.put", "api", "Exchange rate saved"),
];

/// The entry for `name`, if it is in the catalogue.
pub fn action_type(name: &str) -> Option<&'static ActionType> {
    ACTION_TYPES.iter().find(|action| action.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_labelled() {
        let mut names: Vec<_> = ACTION_TYPES.iter().map(|action| action.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ACTION_TYPES.len());
        assert!(ACTION_TYPES.iter().all(|action| !action.label.is_empty() && action.name.contains('.')));
        assert_eq!(action_type("auth.login").map(|action| action.component), Some("api"));
    }
}
