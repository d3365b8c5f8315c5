-- Each instance keeps its JSON, as the API's `Instance` serializes it, in a stored generated
-- column: the instance list (the page read most) sends one text per row rather than 22 values
-- the API decodes and writes again (decision 123). PostgreSQL recomputes it on every write of
-- the row, so it cannot fall behind; a conformance test compares it with serde's output.
--
-- One function calling only built-ins (pg_dump restores with an empty search_path), in
-- PL/pgSQL: as an SQL function it is not inlined (it calls STABLE built-ins) and cost 2.5 times
-- as much per row written (about 20 against 8 microseconds here). Declared IMMUTABLE, as
-- generated columns require: `to_char` and `to_json` are only STABLE for what
-- this does not use (locale-dependent `TM` patterns, types whose output depends on settings),
-- and the times are read in UTC whatever the session's zone. Text is escaped by `to_json` as
-- serde_json escapes it (`\"`, `\\`, `\b \f \n \r \t`, other control characters as `\u00xx`);
-- times are chrono's RFC 3339 with `SecondsFormat::AutoSi` and `Z` (the microseconds in 0, 3
-- or 6 digits; years 0 to 9999, as the server's clock gives).
CREATE FUNCTION qm_instance_json(
    id UUID, organization_id UUID, deployment_id UUID, provider TEXT, zone_id UUID, zone TEXT,
    instance_type_id UUID, instance_type TEXT, model TEXT, state TEXT, state_changed_at TIMESTAMPTZ,
    progress_percent INTEGER, provider_instance_id TEXT, address TEXT, hourly_price_micros BIGINT,
    currency TEXT, failure_reason TEXT, deleted_by_provider BOOLEAN, archived BOOLEAN,
    revision INTEGER, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ
) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN '{"id":"' || id::TEXT
        || '","organization_id":"' || organization_id::TEXT
        || '","deployment_id":' || coalesce('"' || deployment_id::TEXT || '"', 'null')
        || ',"provider":' || to_json(provider)::TEXT
        || ',"zone_id":"' || zone_id::TEXT
        || '","zone":' || to_json(zone)::TEXT
        || ',"instance_type_id":"' || instance_type_id::TEXT
        || '","instance_type":' || to_json(instance_type)::TEXT
        || ',"model":' || to_json(model)::TEXT
        || ',"state":' || to_json(state)::TEXT
        || ',"state_changed_at":"'
        || regexp_replace(to_char(state_changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '\.?(000)?000$', '')
        || 'Z","progress_percent":' || progress_percent::TEXT
        || ',"provider_instance_id":' || coalesce(to_json(provider_instance_id)::TEXT, 'null')
        || ',"address":' || coalesce(to_json(address)::TEXT, 'null')
        || ',"hourly_price_micros":' || hourly_price_micros::TEXT
        || ',"currency":' || to_json(currency)::TEXT
        || ',"failure_reason":' || coalesce(to_json(failure_reason)::TEXT, 'null')
        || ',"deleted_by_provider":' || deleted_by_provider::TEXT
        || ',"archived":' || archived::TEXT
        || ',"revision":' || coalesce(revision::TEXT, 'null')
        || ',"created_at":"'
        || regexp_replace(to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '\.?(000)?000$', '')
        || 'Z","updated_at":"'
        || regexp_replace(to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '\.?(000)?000$', '')
        || 'Z"}';
END
$$;

ALTER TABLE instances ADD COLUMN json TEXT NOT NULL GENERATED ALWAYS AS (qm_instance_json(
    id, organization_id, deployment_id, provider, zone_id, zone, instance_type_id, instance_type,
    model, state, state_changed_at, progress_percent, provider_instance_id, address,
    hourly_price_micros, currency, failure_reason, deleted_by_provider, archived, revision,
    created_at, updated_at
)) STORED;
