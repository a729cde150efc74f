-- Change in log p(correct answer) of held-out people's QA when one prompt token is masked, by token class (mean over positions and questions)
PIVOT (SELECT model, strategy, token_class, round(delta, 2) AS delta
       FROM token_dependence_summary)
ON token_class IN ('name', 'relation', 'other')
USING any_value(delta)
ORDER BY model, strategy;
