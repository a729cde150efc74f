-- K per (run, task, k): K = max(1, ceil(k/100 · n_ranked)), n_ranked = ranked elements of the
-- full model (from the dump metadata, so it is exact even when only a top percent was dumped).
-- The same formula is crosstrace.dump.topk_count.
CREATE TABLE topk_sizes AS
WITH ranked AS (
    SELECT model, strategy, seed, task, sum(n_params)::BIGINT AS n_ranked
    FROM trace_cells
    WHERE module IN (SELECT module FROM rank_modules)
    GROUP BY ALL
)
SELECT
    r.model, r.strategy, r.seed, r.task, k.k_percent, r.n_ranked,
    greatest(1, ceil(k.k_percent / 100.0 * r.n_ranked::DOUBLE - 1e-9))::BIGINT AS k_rows
FROM ranked AS r CROSS JOIN k_values AS k;
