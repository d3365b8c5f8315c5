-- FinOps (issue 6). The orchestrator's record of when billing started and stopped for each
-- instance (it emits instance.billing_started / instance.billing_stopped once each).
ALTER TABLE instances ADD COLUMN billing_started_at TIMESTAMPTZ;
ALTER TABLE instances ADD COLUMN billing_stopped_at TIMESTAMPTZ;

-- One cost interval per instance, written by finops from the billing events. Either event may
-- arrive first: the dimensions and prices come with billing_started and are NULL until then.
-- Times are UTC epoch seconds, so both databases compute the same integer arithmetic.
CREATE TABLE cost_intervals (
    instance_id              UUID PRIMARY KEY,
    organization_id          UUID,
    provider                 TEXT,
    region                   TEXT,
    zone                     TEXT,
    instance_type            TEXT,
    model                    TEXT,
    currency                 TEXT,
    hourly_price_micros      BIGINT,
    reporting_currency       TEXT,
    reporting_hourly_micros  BIGINT,
    started_s                BIGINT,
    stopped_s                BIGINT,
    updated_at               TIMESTAMPTZ NOT NULL
);
CREATE INDEX cost_intervals_started_idx ON cost_intervals (started_s);
CREATE INDEX cost_intervals_stopped_idx ON cost_intervals (stopped_s);

-- Token usage, one row per usage.tokens event (its id makes a replay a no-op).
CREATE TABLE token_usage (
    event_id           UUID PRIMARY KEY,
    at_s               BIGINT NOT NULL,
    organization_id    UUID NOT NULL,
    instance_id        UUID,
    api_key_id         UUID,
    model              TEXT NOT NULL,
    provider           TEXT,
    region             TEXT,
    zone               TEXT,
    instance_type      TEXT,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL
);
CREATE INDEX token_usage_at_idx ON token_usage (at_s);

-- Rates into the reporting currency (micro-units of it per unit), edited through the api; they
-- override QM_FX_RATES.
CREATE TABLE exchange_rates (
    currency     TEXT PRIMARY KEY,
    rate_micros  BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- Monthly budgets per organization, in the reporting currency.
CREATE TABLE budgets (
    organization_id  UUID PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    amount_micros    BIGINT NOT NULL,
    thresholds       JSONB NOT NULL,
    hard_cap         BOOLEAN NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- Each threshold fires once per organization and period (YYYY-MM).
CREATE TABLE budget_alerts (
    organization_id  UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    period           TEXT NOT NULL,
    threshold        INTEGER NOT NULL,
    spend_micros     BIGINT NOT NULL,
    crossed_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (organization_id, period, threshold)
);
