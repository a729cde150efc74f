-- One ablation file written by crosstrace.ablate (registered as ablation_in by
-- crosstrace.database; one row per condition, draw, counterfactual and split).
INSERT INTO ablation_draws
SELECT model, strategy, seed, definition, scope, k_percent, condition, draw,
       CASE WHEN condition = 'none' THEN 'none' ELSE counterfactual END,
       n_target, n_reset, shift_norm, split, n, accuracy
FROM ablation_in;
