-- Content-addressed images: every source, edited and generated image, by the sha256 of its bytes.
CREATE TABLE images (
    sha256 VARCHAR PRIMARY KEY,
    path VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    first_seen TIMESTAMP DEFAULT current_timestamp
);

-- Inputs that could not be used, with the reason; a run never crashes on them.
CREATE TABLE quarantine (
    asset VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    locator VARCHAR NOT NULL,
    raw VARCHAR,
    reason VARCHAR NOT NULL,
    dagster_run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- The per-sample inference cache: one row per model call ever committed, keyed by the hash of
-- model + revision, template + version, rendered inputs (image hashes included) and decoding.
CREATE TABLE inference_cache (
    cache_key VARCHAR PRIMARY KEY,
    stage VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    model_revision VARCHAR NOT NULL,
    template_id VARCHAR NOT NULL,
    template_version VARCHAR NOT NULL,
    decoding VARCHAR NOT NULL,
    sample_id VARCHAR NOT NULL,
    output_text VARCHAR,
    parsed VARCHAR,
    ok BOOLEAN NOT NULL,
    failure VARCHAR,
    attempts INTEGER NOT NULL,
    model_seconds DOUBLE NOT NULL,
    dagster_run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- A dataset version is its exact membership plus a content hash.
CREATE TABLE dataset_versions (
    dataset VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    n_samples INTEGER NOT NULL,
    params VARCHAR NOT NULL,
    parquet_path VARCHAR NOT NULL,
    export_path VARCHAR,
    dagster_run_id VARCHAR,
    mlflow_run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (dataset, version)
);

CREATE TABLE dataset_members (
    dataset VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    sample_id VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    cache_keys VARCHAR[] NOT NULL,
    PRIMARY KEY (dataset, version, sample_id)
);

-- Asset-level lineage: which input version each output version was built from, by which runs.
CREATE TABLE lineage_edges (
    output_asset VARCHAR NOT NULL,
    output_version VARCHAR NOT NULL,
    input_asset VARCHAR NOT NULL,
    input_version VARCHAR NOT NULL,
    dagster_run_id VARCHAR,
    mlflow_run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- Asset outputs (requests, candidates, captions, scores ...) are tables in this schema, one per asset,
-- replaced whole at each materialization by the warehouse IO manager.
CREATE SCHEMA assets;
