-- Asset outputs by run: asset_rows.<asset> holds each run's rows (column _dagster_run_id), so
-- concurrent runs never read each other's outputs; assets.<asset> is a view of the latest run.
CREATE SCHEMA asset_rows;

CREATE TABLE asset_runs (
    asset VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    written_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (asset, run_id)
);
