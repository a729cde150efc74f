-- Step 1 of the exact thresholds of one run and task ($model, $strategy, $seed, $task).
-- Definition (shared with crosstrace.dump.kth_largest and the ablation): over the ranked
-- modules, threshold = the K-th largest abs(delta), exactly, with K = topk_sizes.k_rows;
-- an element is in the top-k when abs(delta) >= threshold.
-- A 1M-row ORDER BY ... LIMIT is slow, so: histogram of the monotone bucket
-- floor(256·ln|delta|), then for each k the bucket holding the K-th largest, the rank r of
-- that element inside the bucket and the bucket's value range [lo, hi] (step 2 sorts only
-- the rows in that range). lo is NULL when fewer than K rows exist.
INSERT INTO threshold_targets
WITH hist AS (
    SELECT CASE WHEN abs(delta) > 0 THEN floor(ln(abs(delta)) * 256)::BIGINT
                ELSE -9223372036854775807 END AS b,
           count(*) AS n, min(abs(delta)) AS lo, max(abs(delta)) AS hi
    FROM trace
    WHERE model = $model AND strategy = $strategy AND seed = $seed AND task = $task
      AND module IN (SELECT module FROM rank_modules)
    GROUP BY b
),
cum AS (
    SELECT *, sum(n) OVER (ORDER BY b DESC ROWS UNBOUNDED PRECEDING) AS at_or_above FROM hist
)
SELECT s.model, s.strategy, s.seed, s.task, s.k_percent, s.n_ranked, s.k_rows,
       s.k_rows - (c.at_or_above - c.n) AS r, c.lo, c.hi
FROM topk_sizes AS s
LEFT JOIN cum AS c ON c.at_or_above >= s.k_rows AND c.at_or_above - c.n < s.k_rows
WHERE s.model = $model AND s.strategy = $strategy AND s.seed = $seed AND s.task = $task;
