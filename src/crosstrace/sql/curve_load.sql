-- One run's training curve ($path, crosstrace.curve) for the run ($model, $strategy, $seed).
INSERT INTO training_curve_raw
SELECT $model, $strategy, $seed, phase, step, split, n, accuracy
FROM read_parquet($path);
