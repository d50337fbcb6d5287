-- What each materialization of a model-calling asset cost (firm_assets/curation/costs.py): one row
-- per (run, asset) with its CPU seconds (process time), GPU seconds (model seconds on a local CUDA
-- device) and wall seconds, and one row per (run, asset, stage, model) with the calls made, cache
-- hits, model seconds, tokens read and written and images generated. Cache hits cost 0 tokens.
CREATE TABLE materialization_costs (
    dagster_run_id VARCHAR NOT NULL,
    asset_key VARCHAR NOT NULL,
    data_version VARCHAR,              -- the asset's output data version, where it has one
    wall_seconds DOUBLE NOT NULL,
    cpu_seconds DOUBLE NOT NULL,
    gpu_seconds DOUBLE NOT NULL,
    recorded_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (dagster_run_id, asset_key)
);

CREATE TABLE model_costs (
    dagster_run_id VARCHAR NOT NULL,
    asset_key VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    model_revision VARCHAR NOT NULL,
    backend VARCHAR NOT NULL,
    model_calls INTEGER NOT NULL,
    cache_hits INTEGER NOT NULL,
    model_seconds DOUBLE NOT NULL,
    gpu_seconds DOUBLE NOT NULL,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    images_generated INTEGER NOT NULL,
    PRIMARY KEY (dagster_run_id, asset_key, stage, model_id, model_revision)
);
