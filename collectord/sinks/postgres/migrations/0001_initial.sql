-- collectord schema, version 1.
--
-- Differences from the seed, and why:
-- * metrics has no surrogate primary key: a unique key on a table partitioned by time must
--   include the partition column, and raw points have no natural unique key. Rows are written
--   once, in order, and a crashed writer deletes what it may have written past its checkpointed
--   high-water mark before writing again (see sink.py), so no key is needed for idempotence.
-- * metrics_aggregated's unique key holds the source (the daemon's instance name): two hosts
--   writing the same series no longer overwrite each other; a query merges their rows.
--   It holds a hash of the tags rather than the jsonb itself: 20 tags of 150 characters exceed
--   a B-tree entry's size limit.
-- * scope 1 rows hold a metric's windows merged over all its series (one row per period), so a
--   query over a metric with no tag filter reads one row per period per source.
-- * count is a double: sample rates make weighted counts fractional (x:1|c|@0.3).
-- * the serialised sketch is stored, so percentiles merge exactly across sources and periods.
-- * No foreign keys to tenants: on a COPY of raw points a per-row trigger halves the rate; the
--   sink registers every tenant it writes before writing it.

CREATE TABLE tenants (
    id text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE metrics (
    tenant_id text NOT NULL,
    source text NOT NULL,
    metric_name varchar(255) NOT NULL,
    metric_value double precision NOT NULL,
    metric_type varchar(50) NOT NULL
        CHECK (metric_type IN ('COUNTER', 'GAUGE', 'HISTOGRAM', 'SUMMARY', 'SET')),
    weight double precision NOT NULL DEFAULT 1,
    tags jsonb NOT NULL DEFAULT '{}',
    "timestamp" timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    unit varchar(50),
    aggregation_type varchar(50)
) PARTITION BY RANGE ("timestamp");

-- Serves purge (tenant, names, time). The seed's GIN index on raw tags is left out: no query
-- reads raw points by tag (queries read aggregates), and it cost most of the COPY rate.
CREATE INDEX idx_metrics_name_timestamp ON metrics (tenant_id, metric_name, "timestamp" DESC);

CREATE TABLE metrics_aggregated (
    tenant_id text NOT NULL,
    source text NOT NULL,
    metric_name varchar(255) NOT NULL,
    metric_type varchar(50) NOT NULL,
    scope smallint NOT NULL CHECK (scope IN (0, 1)),
    tags jsonb NOT NULL DEFAULT '{}',
    series_hash bytea NOT NULL,
    granularity varchar(20) NOT NULL CHECK (granularity IN ('1m', '5m', '1h', '1d')),
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    count double precision NOT NULL,
    sum double precision NOT NULL,
    min double precision,
    max double precision,
    avg double precision,
    p50 double precision,
    p90 double precision,
    p95 double precision,
    p99 double precision,
    last double precision,
    sketch bytea,
    members text[],
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, metric_name, granularity, scope, period_start, series_hash, source)
) WITH (fillfactor = 70);
-- fillfactor: open windows are rewritten at every flush; room on the page lets PostgreSQL
-- update them in place (HOT: no indexed column changes), without touching any index.

-- The primary key serves the queries (tenant, names, granularity, scope, period range); the GIN
-- index serves tag filters (tags @> ...); the last one serves retention.
CREATE INDEX idx_metrics_agg_tags ON metrics_aggregated USING gin (tags);
CREATE INDEX idx_metrics_agg_retention ON metrics_aggregated (granularity, period_start);

CREATE TABLE audit_log (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text,
    action varchar(64) NOT NULL,
    entity_type varchar(64) NOT NULL,
    entity_id text,
    metadata jsonb NOT NULL DEFAULT '{}',
    source text NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE INDEX idx_audit_log_tenant_time ON audit_log (tenant_id, created_at DESC);
