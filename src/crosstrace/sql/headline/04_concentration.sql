-- Concentration over attention heads (Gini; 0 = spread evenly, 1 = all in one head), global top-1 %, primary definition: the shared set against the Gini its null expects (the expected shared counts per head, n_bio·n_qa/n), and each task's own top-k set
SELECT model, strategy, any_value(n_seeds) AS seeds,
       interval_text(max(gini) FILTER (WHERE "set" = 'shared'),
                     max(ci_low) FILTER (WHERE "set" = 'shared'),
                     max(ci_high) FILTER (WHERE "set" = 'shared'), 2) AS "shared [95 % CI]",
       round(max(gini) FILTER (WHERE "set" = 'null'), 2) AS "null",
       round(max(gini) FILTER (WHERE "set" = 'shared') - max(gini) FILTER (WHERE "set" = 'null'),
             2) AS "shared − null",
       round(max(gini) FILTER (WHERE "set" = 'bio'), 2) AS bio,
       round(max(gini) FILTER (WHERE "set" = 'qa'), 2) AS qa,
       round(max(top10_share) FILTER (WHERE "set" = 'shared'), 2) AS shared_top10_share
FROM concentration_summary
WHERE definition = (SELECT primary_definition FROM analysis_settings) AND scope = 'global'
  AND k_percent = 1 AND unit = 'head'
GROUP BY model, strategy
ORDER BY model, strategy;
