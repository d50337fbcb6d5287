-- Leaderboard flags: a judge whose parsed predictions never vary (a constant predictor, e.g. the
-- `constant` baseline, judge_kind = 'constant'), and whether its answers were held to the parser's
-- format by guided decoding (trained and base alike on a guided profile; API judges never; NULL
-- for the constant baseline, which decodes nothing).
ALTER TABLE bench_leaderboard ADD COLUMN constant_predictions BOOLEAN;
ALTER TABLE bench_leaderboard ADD COLUMN guided BOOLEAN;
