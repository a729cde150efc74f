-- Change in log p(correct answer) of held-out people's QA when one prompt token is masked, by token class (mean over positions and questions; mean over seeds [95 % interval])
SELECT model, strategy, any_value(n_seeds) AS seeds,
       interval_text(max(delta) FILTER (WHERE token_class = 'name'),
                     max(ci_low) FILTER (WHERE token_class = 'name'),
                     max(ci_high) FILTER (WHERE token_class = 'name'), 2) AS name,
       interval_text(max(delta) FILTER (WHERE token_class = 'relation'),
                     max(ci_low) FILTER (WHERE token_class = 'relation'),
                     max(ci_high) FILTER (WHERE token_class = 'relation'), 2) AS relation,
       interval_text(max(delta) FILTER (WHERE token_class = 'other'),
                     max(ci_low) FILTER (WHERE token_class = 'other'),
                     max(ci_high) FILTER (WHERE token_class = 'other'), 2) AS other
FROM token_dependence_summary
GROUP BY model, strategy
ORDER BY model, strategy;
