-- Shared parameters (top-k of |Δ_BIO| and of |Δ_QA|, primary definition) over three nulls: stratified (Σ over head slices / tensors of n_bio·n_qa/n), per cell (MLP neurons as strata), and margins (each tensor's row and column inclusion rates kept); then same-sign and opposite-sign shared elements, each over its own stratified null; vs_k2 divides by the global (k/100)² instead: mean over seeds [95 % interval]
SELECT model, strategy, scope, k_percent AS k, any_value(n_seeds) AS seeds,
       round(n_shared, 1) AS shared, round(expected_shared, 1) AS expected,
       interval_text(enrichment, ci_low, ci_high, 2) AS "stratified [95 % CI]",
       round(enrichment_cells, 2) AS "per cell",
       interval_text(enrichment_margins, margins_ci_low, margins_ci_high, 2)
           AS "margins [95 % CI]",
       round(same_sign_share, 2) AS "same-sign share",
       interval_text(enrichment_same_sign, same_sign_ci_low, same_sign_ci_high, 2)
           AS "same sign [95 % CI]",
       interval_text(enrichment_opposite_sign, opposite_sign_ci_low, opposite_sign_ci_high, 2)
           AS "opposite sign [95 % CI]",
       round(enrichment_global, 1) AS vs_k2
FROM overlap_summary
WHERE definition = (SELECT primary_definition FROM analysis_settings)
GROUP BY ALL
ORDER BY model, scope, k_percent, strategy;
