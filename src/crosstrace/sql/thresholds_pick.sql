-- Step 2: the r-th largest abs(delta) among the rows of one bucket ($lo <= abs(delta) <= $hi),
-- for one run, task and k. The delta range is written as two plain comparisons so that the
-- Parquet scan can skip rows before reading the other columns.
INSERT INTO thresholds
SELECT $model, $strategy, $seed, $task, $k_percent, $n_ranked, $k_rows, (
    SELECT abs(delta) AS a
    FROM trace
    WHERE model = $model AND strategy = $strategy AND seed = $seed AND task = $task
      AND module IN (SELECT module FROM rank_modules)
      AND ((delta >= $lo AND delta <= $hi) OR (delta >= -$hi AND delta <= -$lo))
    ORDER BY a DESC
    LIMIT 1 OFFSET $r - 1
);
