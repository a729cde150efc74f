-- Shared parameters (top-k of |Δ_BIO| and of |Δ_QA|, trajectory Δ) over the stratified null (expected = Σ over strata of n_bio·n_qa/n); vs_k2 divides by the global (k/100)² instead
SELECT model, strategy, scope, k_percent AS k, any_value(n_seeds) AS seeds,
       round(n_shared, 1) AS shared, round(expected_shared, 1) AS expected,
       interval_text(enrichment, ci_low, ci_high, 2) AS "enrichment [95 % CI]",
       round(z, 1) AS z, round(enrichment_global, 1) AS vs_k2
FROM overlap_summary
WHERE definition = 'trajectory'
GROUP BY ALL
ORDER BY model, scope, k_percent, strategy;
