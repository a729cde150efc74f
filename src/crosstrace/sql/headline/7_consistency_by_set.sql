-- Cosine of the BIO and QA gradients restricted to a parameter set (global top-1 %, trajectory Δ): the shared set, a random set matched to it stratum by stratum, and every ranked parameter; mean over seeds [95 % interval]
SELECT model, strategy, source, any_value(n_seeds) AS seeds,
       interval_text(max(cosine) FILTER (WHERE "set" = 'shared'),
                     max(ci_low) FILTER (WHERE "set" = 'shared'),
                     max(ci_high) FILTER (WHERE "set" = 'shared'), 3) AS shared,
       interval_text(max(cosine) FILTER (WHERE "set" = 'random'),
                     max(ci_low) FILTER (WHERE "set" = 'random'),
                     max(ci_high) FILTER (WHERE "set" = 'random'), 3) AS random,
       interval_text(max(cosine) FILTER (WHERE "set" = 'all'),
                     max(ci_low) FILTER (WHERE "set" = 'all'),
                     max(ci_high) FILTER (WHERE "set" = 'all'), 3) AS "all"
FROM consistency_by_set_summary
WHERE definition = 'trajectory' AND scope = 'global' AND k_percent = 1
GROUP BY model, strategy, source
ORDER BY model, source, strategy;
