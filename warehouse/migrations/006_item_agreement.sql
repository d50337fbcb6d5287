-- Item agreement of plan-then-score critics, where bench items carry checklist labels
-- (firm_assets/benchmark/item_agreement.py); null where no item is labelled.
ALTER TABLE bench_leaderboard ADD COLUMN item_agreement DOUBLE;          -- labelled questions answered right / labelled
ALTER TABLE bench_leaderboard ADD COLUMN item_matched_agreement DOUBLE;  -- answered right / matched
ALTER TABLE bench_leaderboard ADD COLUMN item_n_labelled INTEGER;
ALTER TABLE bench_leaderboard ADD COLUMN item_n_matched INTEGER;
