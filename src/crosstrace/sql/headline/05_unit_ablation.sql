-- Unit ablation (global scope, primary definition, k = analysis.primary_k): accuracy drop (θT − ablated) when the n attention heads or MLP neurons holding the most shared elements are reset to θ0, against layer-matched random sets of n units (mean over draws); ‖θT − θ0‖ over each; excess = top − random, paired within seed: mean over seeds [95 % interval]; rank p: the largest over seeds of (1 + random draws losing at least as much as the top units) / (1 + draws), at best 1 / (1 + draws); top units of the first seed
SELECT model, strategy, unit, n_units AS n, split, count(*) AS seeds,
       round(avg(accuracy_none), 3) AS "θT",
       round(avg(drop_top), 3) AS top, round(avg(drop_random), 3) AS random,
       round(avg(shift_norm_top), 3) AS "‖θT−θ0‖ top",
       round(avg(shift_norm_random), 3) AS "‖θT−θ0‖ random",
       interval_text(avg(excess), avg(excess) - ci_half(stddev_samp(excess), count(*)),
                     avg(excess) + ci_half(stddev_samp(excess), count(*)), 3)
           AS "excess [95 % CI]",
       round(max(rank_p), 3) AS "rank p",
       arg_min(CASE WHEN unit = 'head' THEN top_units ELSE '–' END, seed) AS "top units"
FROM unit_ablation
GROUP BY ALL
ORDER BY model, unit, n, split, strategy;
