-- Unit ablation per run, unit kind (head | neuron), number of units (n_units asked, n_chosen
-- the units that hold any shared element, at most n_units) and split: the accuracy
-- lost when the n units holding the most shared elements are reset to θ0 (drop_top), the mean
-- loss over the layer-matched random draws of n units (drop_random), their difference
-- (excess), and rank_p = (1 + draws losing at least as much as the top units) / (1 + draws):
-- the one-sided permutation p of the top units against the random draws, at best
-- 1 / (1 + draws). θT's accuracy is the ablation's condition 'none' of the same run and split,
-- scored on the same questions.
CREATE TABLE unit_ablation AS
WITH base AS (
    SELECT model, strategy, seed, split, any_value(accuracy) AS accuracy_none
    FROM ablation_draws WHERE condition = 'none'
    GROUP BY ALL
),
per_set AS (
    SELECT u.*, b.accuracy_none - u.accuracy AS accuracy_drop, b.accuracy_none
    FROM unit_ablation_draws AS u JOIN base AS b USING (model, strategy, seed, split)
),
top AS (
    SELECT * FROM per_set WHERE condition = 'top'
)
SELECT t.model, t.strategy, t.seed, t.definition, t.scope, t.k_percent, t.unit, t.n_units,
       t.n_chosen, t.split, t.units AS top_units, t.n_shared AS n_shared_top,
       avg(r.n_shared) AS n_shared_random, avg(r.n_same_layer) AS n_same_layer_random,
       t.n_reset, t.shift_norm AS shift_norm_top, avg(r.shift_norm) AS shift_norm_random,
       t.accuracy_none, t.accuracy_drop AS drop_top, avg(r.accuracy_drop) AS drop_random,
       stddev_samp(r.accuracy_drop) AS drop_random_sd, count(r.draw) AS n_draws,
       t.accuracy_drop - avg(r.accuracy_drop) AS excess,
       (1 + count(*) FILTER (WHERE r.accuracy_drop >= t.accuracy_drop)) / (1 + count(r.draw))
           AS rank_p
FROM top AS t
LEFT JOIN per_set AS r
    ON r.condition = 'random' AND (r.model, r.strategy, r.seed, r.unit, r.n_units, r.split)
       = (t.model, t.strategy, t.seed, t.unit, t.n_units, t.split)
GROUP BY t.model, t.strategy, t.seed, t.definition, t.scope, t.k_percent, t.unit, t.n_units,
         t.n_chosen, t.split, t.units, t.n_shared, t.n_reset, t.shift_norm, t.accuracy_none, t.accuracy_drop
ORDER BY ALL;
