-- Operations: files imported from the inbox folders (firm_assets/inbox.py) and failed Dagster runs
-- (sensors/operations.py).

-- One row per inbox file: the content last imported. A changed file replaces its row and its rows.
CREATE TABLE inbox_files (
    inbox VARCHAR NOT NULL,             -- edit | gen
    file VARCHAR NOT NULL,              -- the file name, also the dynamic partition key
    sha256 VARCHAR NOT NULL,            -- content imported
    n_rows INTEGER NOT NULL,
    quarantined INTEGER NOT NULL,
    dagster_run_id VARCHAR NOT NULL,
    imported_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (inbox, file)
);

CREATE TABLE inbox_edit_requests (
    file VARCHAR NOT NULL,
    request_id VARCHAR NOT NULL,
    instruction VARCHAR NOT NULL,
    requirement VARCHAR,
    image VARCHAR NOT NULL,
    edited_images VARCHAR[] NOT NULL,
    images_root VARCHAR NOT NULL,
    line INTEGER NOT NULL,
    PRIMARY KEY (file, request_id)
);

CREATE TABLE inbox_gen_prompts (
    file VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    locator VARCHAR NOT NULL,
    tag VARCHAR,
    geneval VARCHAR,                    -- canonical JSON checklist of GenEval metadata, else NULL
    PRIMARY KEY (file, prompt_id)
);

-- One row per failed step of a failed run; step is NULL when the run failed outside any step.
CREATE TABLE run_failures (
    run_id VARCHAR NOT NULL,
    job VARCHAR NOT NULL,
    step VARCHAR,
    error VARCHAR NOT NULL,
    recorded_at TIMESTAMP DEFAULT current_timestamp
);
