-- Accuracy drop (θT − ablated) when a set is reset to θ0, global scope, trajectory Δ; controls have the shared set's size in the same strata (mean over draws); excess = shared − random, paired within seed
WITH per_seed AS (
    SELECT model, strategy, seed, k_percent, split,
           max(accuracy) FILTER (WHERE condition = 'none') AS theta_t,
           max(accuracy_drop) FILTER (WHERE condition = 'shared') AS shared,
           max(accuracy_drop) FILTER (WHERE condition = 'random') AS random,
           max(accuracy_drop) FILTER (WHERE condition = 'bio_only') AS bio_only,
           max(accuracy_drop) FILTER (WHERE condition = 'qa_only') AS qa_only,
           max(n_target) FILTER (WHERE condition = 'shared') AS n_shared
    FROM ablation
    WHERE scope = 'global' AND counterfactual IN ('none', 'reset')
      AND definition = (SELECT primary_definition FROM analysis_settings)
    GROUP BY ALL
)
SELECT model, strategy, k_percent AS k, split, count(*) AS seeds,
       round(avg(n_shared)) AS n_reset, round(avg(theta_t), 3) AS "θT",
       round(avg(shared), 3) AS shared, round(avg(random), 3) AS random,
       round(avg(bio_only), 3) AS bio_only, round(avg(qa_only), 3) AS qa_only,
       interval_text(avg(shared - random),
                     avg(shared - random) - ci_half(stddev_samp(shared - random), count(*)),
                     avg(shared - random) + ci_half(stddev_samp(shared - random), count(*)),
                     3) AS "excess [95 % CI]"
FROM per_seed
GROUP BY ALL
ORDER BY model, k_percent, split, strategy;
