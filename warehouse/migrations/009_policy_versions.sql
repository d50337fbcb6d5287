-- RL policies (firm_assets/rl): each version names the critic version that rewarded it, the reward
-- formula and weights, the prompt set it trained on and the base pipeline it adapts.
CREATE TABLE policy_versions (
    policy VARCHAR NOT NULL,            -- edit_rl_policy | gen_rl_policy
    version VARCHAR NOT NULL,           -- hash of base revision, critic, reward, prompt set, NFT config, code
    critic VARCHAR NOT NULL,            -- e.g. firm_edit_critic
    critic_version VARCHAR NOT NULL,    -- the critics table's version
    critic_source VARCHAR NOT NULL,     -- what the scorer loaded: a folder@revision or models:/name/version
    reward VARCHAR NOT NULL,            -- JSON: formula, w1, w2, normalisation, score mode
    prompt_set VARCHAR NOT NULL,        -- the prompt asset: source_images | gen_prompts
    prompt_set_version VARCHAR NOT NULL,
    base_model VARCHAR NOT NULL,
    base_revision VARCHAR NOT NULL,
    config VARCHAR NOT NULL,            -- JSON of the effective DiffusionNFT config
    final_step INTEGER NOT NULL,
    final_loss DOUBLE,
    lora_path VARCHAR NOT NULL,         -- peft save_pretrained folder of the trained LoRA
    ema_lora_path VARCHAR NOT NULL,     -- its EMA copy, for evaluation
    checkpoint_dir VARCHAR NOT NULL,
    mlflow_run_id VARCHAR,
    registered_model VARCHAR,
    model_version VARCHAR,
    dagster_run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (policy, version)
);

-- The prompts of each prompt-set version, so "which prompts trained this policy" is one join.
-- Editing groups are keyed by (instruction, source image): prompt_id hashes both.
CREATE TABLE rl_prompt_sets (
    prompt_set VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    text VARCHAR NOT NULL,
    source_sha VARCHAR,                 -- editing source image (the images table); NULL for generation
    requirement VARCHAR,
    PRIMARY KEY (prompt_set, version, prompt_id)
);

-- The reward-hacking monitors of every optimizer step (image statistics, critic divergence, reward
-- mean, masked fraction, loss); the policies' drift checks read them.
CREATE TABLE policy_monitors (
    policy VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    PRIMARY KEY (policy, version, step, metric)
);

-- One row per policy version: its critic with that critic's training dataset, and its prompt set.
CREATE VIEW policy_audit AS
SELECT
    p.policy,
    p.version,
    p.base_model,
    p.base_revision,
    p.critic,
    p.critic_version,
    p.critic_source,
    c.dataset AS critic_dataset,
    c.dataset_version AS critic_dataset_version,
    c.registered_model AS critic_registered_model,
    c.model_version AS critic_model_version,
    p.reward,
    p.prompt_set,
    p.prompt_set_version,
    (SELECT count(*) FROM rl_prompt_sets s
       WHERE s.prompt_set = p.prompt_set AND s.version = p.prompt_set_version) AS n_prompts,
    p.config,
    p.final_step,
    p.final_loss,
    p.lora_path,
    p.ema_lora_path,
    p.mlflow_run_id,
    p.registered_model,
    p.model_version,
    p.dagster_run_id AS trained_by_dagster_run,
    p.created_at
FROM policy_versions p
LEFT JOIN critics c ON c.critic = p.critic AND c.version = p.critic_version;
