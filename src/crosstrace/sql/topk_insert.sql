-- Top-k members of one run, task and k: ranked modules with abs(delta) >= $threshold
-- (written as two comparisons so that the Parquet scan filters before reading other columns).
INSERT INTO topk
SELECT $model, $strategy, $seed, $task, $k_percent, param, row, col,
       coalesce(layer, -1) AS lk, module, coalesce(head, -1) AS hk
FROM trace
WHERE model = $model AND strategy = $strategy AND seed = $seed AND task = $task
  AND module IN (SELECT module FROM rank_modules)
  AND (delta >= $threshold OR delta <= -$threshold);
