-- Accuracy drop (θT − ablated) when a set is reset to θ0, global scope, primary definition: the shared set against controls of its size drawn in the same strata (random), also matched on how far training moved each element (magnitude), and each task's own top-k set minus the shared one (mean over draws); ‖θT − θ0‖ over the shared and random sets; excess = shared − random and shared − magnitude, paired within seed: mean over seeds [95 % interval]
WITH per_seed AS (
    SELECT model, strategy, seed, k_percent, split,
           max(accuracy) FILTER (WHERE condition = 'none') AS theta_t,
           max(accuracy_drop) FILTER (WHERE condition = 'shared') AS shared,
           max(accuracy_drop) FILTER (WHERE condition = 'random') AS random,
           max(accuracy_drop) FILTER (WHERE condition = 'magnitude') AS magnitude,
           max(accuracy_drop) FILTER (WHERE condition = 'bio_only') AS bio_only,
           max(accuracy_drop) FILTER (WHERE condition = 'qa_only') AS qa_only,
           max(n_target) FILTER (WHERE condition = 'shared') AS n_shared,
           max(shift_norm) FILTER (WHERE condition = 'shared') AS shift_shared,
           max(shift_norm) FILTER (WHERE condition = 'random') AS shift_random
    FROM ablation
    WHERE scope = 'global' AND counterfactual IN ('none', 'reset')
      AND definition = (SELECT primary_definition FROM analysis_settings)
    GROUP BY ALL
)
SELECT model, strategy, k_percent AS k, split, count(*) AS seeds,
       round(avg(n_shared)) AS n_reset, round(avg(theta_t), 3) AS "θT",
       round(avg(shared), 3) AS shared, round(avg(random), 3) AS random,
       round(avg(magnitude), 3) AS magnitude,
       round(avg(bio_only), 3) AS bio_only, round(avg(qa_only), 3) AS qa_only,
       round(avg(shift_shared), 3) AS "‖θT−θ0‖ shared", round(avg(shift_random), 3) AS "‖θT−θ0‖ random",
       interval_text(avg(shared - random),
                     avg(shared - random) - ci_half(stddev_samp(shared - random), count(*)),
                     avg(shared - random) + ci_half(stddev_samp(shared - random), count(*)),
                     3) AS "excess over random [95 % CI]",
       interval_text(avg(shared - magnitude),
                     avg(shared - magnitude)
                         - ci_half(stddev_samp(shared - magnitude), count(*)),
                     avg(shared - magnitude)
                         + ci_half(stddev_samp(shared - magnitude), count(*)),
                     3) AS "excess over magnitude [95 % CI]"
FROM per_seed
GROUP BY ALL
ORDER BY model, k_percent, split, strategy;
