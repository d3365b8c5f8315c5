//! One lifecycle: random sequences of moves, applied through the store (SQLite), are accepted
//! exactly when the domain's transition function allows them, and a move from a state the
//! instance is no longer in changes nothing.

use std::sync::Arc;

use proptest::prelude::*;
use qm_domain::{InstanceId, InstanceState, OrganizationId};
use qm_store::{NewInstance, NewOrganization, Store, StoreError, Transition};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    organization: OrganizationId,
    path: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

fn fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let path = std::env::temp_dir().join(format!("qm-lifecycle-{}.db", uuid::Uuid::new_v4().simple()));
    let (store, organization) = runtime.block_on(async {
        let store = qm_store::connect(&format!("sqlite://{}", path.display())).await.expect("open sqlite");
        let mut tx = store.begin().await.expect("begin");
        let organization =
            NewOrganization { id: OrganizationId::new(), name: "Lifecycle".into(), slug: "lifecycle".into() };
        let organization = tx.insert_organization(&organization).await.expect("organization").id;
        tx.commit().await.expect("commit");
        (store, organization)
    });
    Fixture { runtime, store, organization, path }
}

fn state() -> impl Strategy<Value = InstanceState> {
    proptest::sample::select(InstanceState::ALL.to_vec())
}

/// One attempted move: to `to`, claiming the instance is in its current state (or, when
/// `stale` is set, in `claimed`).
#[derive(Debug, Clone)]
struct Move {
    to: InstanceState,
    stale: Option<InstanceState>,
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    let one = (state(), proptest::option::weighted(0.2, state())).prop_map(|(to, stale)| Move { to, stale });
    proptest::collection::vec(one, 1..24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_store_applies_exactly_the_moves_the_lifecycle_allows(sequence in moves()) {
        let fixture = fixture();
        let Fixture { runtime, store, organization, .. } = &fixture;
        runtime.block_on(async {
            let id = InstanceId::new();
            let mut tx = store.begin().await.expect("begin");
            let instance = NewInstance {
                id,
                organization_id: *organization,
                deployment_id: None,
                placement: qm_store::testing::offer("sim", "sim-eu-1", "sim.l4"),
                model: "m".into(),
                revision: None,
            };
            tx.insert_instance(&instance).await.expect("instance");
            tx.commit().await.expect("commit");
            let mut current = InstanceState::Requested;
            for step in &sequence {
                let from = step.stale.unwrap_or(current);
                let transition = Transition { instance: id, from, to: step.to, reason: None, progress_percent: None };
                let mut tx = store.begin().await.expect("begin");
                let outcome = tx.transition_instance(&transition).await;
                tx.commit().await.expect("commit");
                match (from.transition(step.to), outcome) {
                    (Err(_), Err(StoreError::IllegalTransition(_))) => {}
                    (Ok(_), Ok(Some(moved))) if from == current => {
                        assert_eq!(moved.state, step.to);
                        current = step.to;
                    }
                    (Ok(_), Ok(None)) if from != current => {}
                    (allowed, outcome) => {
                        panic!("{from} -> {} with the instance in {current}: domain {allowed:?}, store {outcome:?}", step.to)
                    }
                }
                let stored = store.instance(id).await.expect("read").expect("exists");
                assert_eq!(stored.state, current, "the stored state is the last allowed move's");
            }
        });
    }
}
