-- The pool controller reads each pool's replicas every second.
CREATE INDEX instances_deployment_idx ON instances (deployment_id, state);
