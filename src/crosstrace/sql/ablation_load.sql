-- One ablation file ($path) written by crosstrace.ablate.
INSERT INTO ablation_raw
SELECT model, strategy, seed, k_percent, condition, n_reset, split, accuracy
FROM read_parquet($path);
