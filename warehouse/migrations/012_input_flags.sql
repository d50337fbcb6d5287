-- Inputs kept but flagged, quarantine-style: the row is used, the flag says what to look at.
-- flag `score_text_in_input`: an instruction, requirement or prompt holding score-shaped text
-- (a JSON score object, \boxed{N}, N/5, "score: N") that a judge echoing it could be misread as.
CREATE TABLE input_flags (
    asset VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    locator VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    raw VARCHAR,
    flag VARCHAR NOT NULL,
    dagster_run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
