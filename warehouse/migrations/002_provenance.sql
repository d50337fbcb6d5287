-- What produced each dataset version, summarised once when the version is published, so an audit
-- of a 370K-sample version is a lookup, not a 1.5M-row join.
CREATE TABLE dataset_provenance (
    dataset VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    model_revision VARCHAR NOT NULL,
    template_id VARCHAR NOT NULL,
    template_version VARCHAR NOT NULL,
    samples BIGINT NOT NULL,
    calls BIGINT NOT NULL,
    dagster_run_ids VARCHAR[] NOT NULL
);

CREATE TABLE dataset_sources (
    dataset VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    samples BIGINT NOT NULL
);

-- One row per dataset version: membership size, sources, templates, curation models and runs.
CREATE VIEW dataset_audit AS
SELECT
    v.dataset,
    v.version,
    v.n_samples,
    v.created_at,
    v.dagster_run_id AS published_by_dagster_run,
    v.mlflow_run_id,
    (SELECT list(struct_pack(source := s.source, samples := s.samples) ORDER BY s.source)
       FROM dataset_sources s WHERE s.dataset = v.dataset AND s.version = v.version) AS sources,
    (SELECT list(DISTINCT p.stage || ': ' || p.template_id || '@' || p.template_version
                  ORDER BY p.stage || ': ' || p.template_id || '@' || p.template_version)
       FROM dataset_provenance p WHERE p.dataset = v.dataset AND p.version = v.version) AS templates,
    (SELECT list(DISTINCT p.stage || ': ' || p.model_id || '@' || p.model_revision
                  ORDER BY p.stage || ': ' || p.model_id || '@' || p.model_revision)
       FROM dataset_provenance p WHERE p.dataset = v.dataset AND p.version = v.version) AS models,
    (SELECT list(DISTINCT r ORDER BY r)
       FROM dataset_provenance p, unnest(p.dagster_run_ids) AS t(r)
       WHERE p.dataset = v.dataset AND p.version = v.version) AS curation_dagster_runs
FROM dataset_versions v;
