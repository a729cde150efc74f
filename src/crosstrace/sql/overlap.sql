-- How many parameters the BIO and QA top-k sets share, against the null that matches how the
-- sets were drawn. Per run, definition, scope and k:
--   expected_shared: sum over strata (a head slice of a tensor, or the tensor) of
--     n_bio * n_qa / n_params, the expectation of |BIO ∩ QA| for two sets drawn independently
--     and uniformly inside each stratum with the observed per-stratum sizes;
--   var_shared: the matching hypergeometric variance, summed over strata;
--   enrichment = n_shared / expected_shared; z = (n_shared - expected_shared) / sqrt(var).
-- The global null (every ranked element equally likely, (k/100)^2 of the population) is kept
-- as expected_shared_global / enrichment_global / chance_fraction_global: gradient scales
-- differ by orders of magnitude between tensors, so it overstates enrichment.
CREATE TABLE overlap AS
WITH strata AS (
    SELECT model, strategy, seed, definition, scope, k_percent, param, module, head,
           sum(n_params)::DOUBLE AS n, sum(n_bio)::DOUBLE AS b, sum(n_qa)::DOUBLE AS q,
           sum(n_shared)::DOUBLE AS s
    FROM shared_counts
    GROUP BY ALL
),
runs AS (
    SELECT model, strategy, seed, definition, scope, k_percent,
           sum(n)::BIGINT AS n_ranked, sum(b)::BIGINT AS n_bio, sum(q)::BIGINT AS n_qa,
           sum(s)::BIGINT AS n_shared,
           sum(b * q / n) AS expected_shared,
           sum(CASE WHEN n > 1 THEN b * (q / n) * (1 - q / n) * (n - b) / (n - 1) ELSE 0 END)
               AS var_shared
    FROM strata
    GROUP BY ALL
)
SELECT model, strategy, seed, definition, scope, k_percent, n_ranked, n_bio, n_qa, n_shared,
       expected_shared,
       n_shared / nullif(expected_shared, 0) AS enrichment,
       (n_shared - expected_shared) / nullif(sqrt(var_shared), 0) AS z,
       n_bio * n_qa / n_ranked::DOUBLE AS expected_shared_global,
       n_shared / nullif(n_bio * n_qa / n_ranked::DOUBLE, 0) AS enrichment_global,
       (k_percent / 100.0) ** 2 AS chance_fraction_global,
       n_shared / n_ranked::DOUBLE AS shared_fraction,
       n_shared / nullif(n_bio + n_qa - n_shared, 0)::DOUBLE AS jaccard
FROM runs
ORDER BY model, strategy, seed, definition, scope, k_percent;
