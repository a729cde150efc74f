-- One ablation file ($path) written by crosstrace.ablate (one row per condition, draw, split).
INSERT INTO ablation_draws
SELECT model, strategy, seed, definition, scope, k_percent, condition, draw, n_target,
       n_reset, split, n, accuracy
FROM read_parquet($path);
