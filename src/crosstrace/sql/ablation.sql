-- Ablation per run, definition, scope, k, condition, counterfactual (reset to θ0, or one
-- task's updates removed) and split: the mean over the control draws (one draw for none and
-- shared, and for the removals), their standard deviation and range, and the drop from θT
-- (condition 'none' of the same run and split): accuracy_drop = θT − ablated.
CREATE TABLE ablation AS
WITH base AS (
    SELECT model, strategy, seed, split, any_value(accuracy) AS accuracy_none
    FROM ablation_draws WHERE condition = 'none'
    GROUP BY ALL
)
SELECT a.model, a.strategy, a.seed, a.definition, a.scope, a.k_percent, a.condition,
       a.counterfactual, a.split,
       count(*) AS n_draws, any_value(a.n_target) AS n_target,
       avg(a.n_reset) AS n_reset, avg(a.shift_norm) AS shift_norm, any_value(a.n) AS n,
       avg(a.accuracy) AS accuracy,
       stddev_samp(a.accuracy) AS accuracy_sd,
       min(a.accuracy) AS accuracy_min, max(a.accuracy) AS accuracy_max,
       any_value(b.accuracy_none) - avg(a.accuracy) AS accuracy_drop
FROM ablation_draws AS a
JOIN base AS b USING (model, strategy, seed, split)
GROUP BY a.model, a.strategy, a.seed, a.definition, a.scope, a.k_percent, a.condition,
         a.counterfactual, a.split
ORDER BY ALL;
