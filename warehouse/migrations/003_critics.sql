-- Trained critics: each version names the exact dataset version it trained on.
CREATE TABLE critics (
    critic VARCHAR NOT NULL,            -- e.g. firm_edit_critic
    version VARCHAR NOT NULL,           -- hash of dataset version + base model revision + recipe
    base_model VARCHAR NOT NULL,
    base_revision VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    dataset_version VARCHAR NOT NULL,
    recipe VARCHAR NOT NULL,            -- JSON of the training hyper-parameters
    path VARCHAR NOT NULL,              -- the saved model folder (loads with from_pretrained)
    revision VARCHAR NOT NULL,          -- sha of the saved weights
    final_loss DOUBLE,
    mlflow_run_id VARCHAR,
    registered_model VARCHAR,
    model_version VARCHAR,
    dagster_run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (critic, version)
);

-- FIRM-Bench results: one row per (judge, bench side, dimension) evaluation.
CREATE TABLE bench_leaderboard (
    bench VARCHAR NOT NULL,             -- edit | gen
    bench_version VARCHAR NOT NULL,     -- content hash of the imported items + labels
    judge VARCHAR NOT NULL,             -- critic name@version, base model id, or API judge
    judge_kind VARCHAR NOT NULL,        -- trained | base | api
    dimension VARCHAR NOT NULL,         -- execution | consistency | overall | instruction
    n_items INTEGER NOT NULL,
    n_scored INTEGER NOT NULL,
    parse_failure_rate DOUBLE NOT NULL,
    mae DOUBLE,
    mae_ci_low DOUBLE,
    mae_ci_high DOUBLE,
    mae_expectation DOUBLE,
    pearson DOUBLE,
    spearman DOUBLE,
    kendall DOUBLE,
    pairwise_agreement DOUBLE,
    dagster_run_id VARCHAR,
    mlflow_run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- One row per critic version: the dataset version it trained on, with that version's provenance.
CREATE VIEW critic_audit AS
SELECT
    c.critic,
    c.version,
    c.base_model,
    c.base_revision,
    c.path,
    c.mlflow_run_id,
    c.registered_model,
    c.model_version,
    c.dagster_run_id AS trained_by_dagster_run,
    c.created_at,
    d.dataset,
    d.version AS dataset_version,
    d.n_samples,
    d.sources,
    d.templates,
    d.models AS curation_models,
    d.curation_dagster_runs,
    d.published_by_dagster_run AS dataset_published_by_dagster_run,
    d.mlflow_run_id AS dataset_mlflow_run_id
FROM critics c
JOIN dataset_audit d ON d.dataset = c.dataset AND d.version = c.dataset_version;
