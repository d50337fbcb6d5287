-- Who is computing which model call right now (firm_assets/curation/leases.py): a run claims the
-- cache misses it is about to compute, so a concurrent run waits for those answers instead of asking
-- the model again. A claim binds until expires_at (epoch seconds) or until its process (host, pid)
-- is gone. No key constraint: claims change only inside the warehouse's exclusive lock, and the
-- code deletes a key's old claim before writing the new one.
CREATE TABLE work_claims (
    stage VARCHAR NOT NULL,
    cache_key VARCHAR NOT NULL,
    owner VARCHAR NOT NULL,           -- one run_cached call: dagster run id + a random suffix
    dagster_run_id VARCHAR,
    host VARCHAR NOT NULL,
    pid INTEGER NOT NULL,
    expires_at DOUBLE NOT NULL
);
