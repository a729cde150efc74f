-- Mixed minus two-stage training, paired within seed: the primary contrast (held-out recall removed by resetting the shared set beyond its stratum-matched random set, analysis.primary_k) with its 95 % interval and paired t-test, then every other contrast with Holm-adjusted p-values
SELECT model, CASE WHEN is_primary THEN 'primary: ' || contrast ELSE contrast END AS contrast,
       n_seeds AS seeds, round(mix, 3) AS mix, round(stage, 3) AS stage,
       interval_text(difference, ci_low, ci_high, 3) AS "mix − stage [95 % CI]",
       round(p_value, 4) AS p, round(p_holm, 4) AS "p (Holm)"
FROM contrasts
ORDER BY is_primary DESC, model, contrast;
