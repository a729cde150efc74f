-- Change in log p(correct answer) of held-out people's QA when one prompt token is masked, by token class (mean over positions and questions; mean over seeds [95 % interval])
WITH cell AS (
    SELECT model, strategy, n_seeds AS seeds, token_class,
           interval_text(delta, ci_low, ci_high, 2) AS text
    FROM token_dependence_summary
)
PIVOT cell
ON token_class IN ('name', 'relation', 'other')
USING any_value(text)
GROUP BY model, strategy, seeds
ORDER BY model, strategy;
