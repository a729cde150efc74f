-- How many parameters the BIO and QA top-k sets share, against nulls of how they were drawn.
-- Per run, definition, scope and k:
--   expected_shared (the stratified null): sum over strata (a head slice of a tensor, or the
--     tensor) of n_bio * n_qa / n_params, the expectation of |BIO ∩ QA| for two sets drawn
--     independently and uniformly inside each stratum with the observed per-stratum sizes;
--   expected_cells: the same over cells, where an MLP tensor's stratum is each neuron;
--   expected_margins: the sets keep each tensor's row and column inclusion rates (a rank-1
--     fit of each task's inclusion indicators, p_ij = r_i c_j / T) and are independent given
--     them: sum over elements of p_bio_ij * p_qa_ij. Row and column scales that both tasks
--     share (input features, busy neurons) are in this null, not in the stratified one;
--   same sign / opposite sign: shared elements whose two Δ agree or disagree in sign, each
--     against its own stratified null (the positive and negative top-k members of the two
--     tasks paired independently inside each stratum): a set drawn on |Δ| overlaps more when
--     the two Δ correlate in either direction, so the split says which.
--   enrichment_* = observed / expected.
-- The global null (every ranked element equally likely, (k/100)^2 of the population) is kept
-- as expected_shared_global / enrichment_global / chance_fraction_global: gradient scales
-- differ by orders of magnitude between tensors, so it overstates enrichment.
-- overlap_of(source): the same for any table with the columns of shared_counts (the people
-- control's counts use it too).
CREATE MACRO overlap_of(source) AS TABLE
WITH strata AS (
    SELECT model, strategy, seed, definition, scope, k_percent, param, module, head,
           sum(n_params)::DOUBLE AS n, sum(n_bio)::DOUBLE AS b, sum(n_qa)::DOUBLE AS q,
           sum(n_shared)::DOUBLE AS s, sum(n_shared_same_sign)::DOUBLE AS s_same,
           sum(n_bio_positive)::DOUBLE AS bp, sum(n_qa_positive)::DOUBLE AS qp,
           sum(expected_margins) AS e_margins,
           sum(n_bio::DOUBLE * n_qa / n_params) AS e_cells
    FROM query_table(source)
    GROUP BY ALL
),
runs AS (
    SELECT model, strategy, seed, definition, scope, k_percent,
           sum(n)::BIGINT AS n_ranked, sum(b)::BIGINT AS n_bio, sum(q)::BIGINT AS n_qa,
           sum(s)::BIGINT AS n_shared, sum(s_same)::BIGINT AS n_shared_same_sign,
           sum(b * q / n) AS expected_shared,
           sum(e_cells) AS expected_cells,
           sum(e_margins) AS expected_margins,
           sum((bp * qp + (b - bp) * (q - qp)) / n) AS expected_same_sign,
           sum((bp * (q - qp) + (b - bp) * qp) / n) AS expected_opposite_sign
    FROM strata
    GROUP BY ALL
)
SELECT model, strategy, seed, definition, scope, k_percent, n_ranked, n_bio, n_qa, n_shared,
       expected_shared,
       n_shared / nullif(expected_shared, 0) AS enrichment,
       expected_cells, n_shared / nullif(expected_cells, 0) AS enrichment_cells,
       expected_margins, n_shared / nullif(expected_margins, 0) AS enrichment_margins,
       n_shared_same_sign, expected_same_sign,
       n_shared_same_sign / nullif(expected_same_sign, 0) AS enrichment_same_sign,
       n_shared - n_shared_same_sign AS n_shared_opposite_sign, expected_opposite_sign,
       (n_shared - n_shared_same_sign) / nullif(expected_opposite_sign, 0)
           AS enrichment_opposite_sign,
       n_bio * n_qa / n_ranked::DOUBLE AS expected_shared_global,
       n_shared / nullif(n_bio * n_qa / n_ranked::DOUBLE, 0) AS enrichment_global,
       (k_percent / 100.0) ** 2 AS chance_fraction_global,
       n_shared / n_ranked::DOUBLE AS shared_fraction,
       n_shared / nullif(n_bio + n_qa - n_shared, 0)::DOUBLE AS jaccard
FROM runs;
CREATE TABLE overlap AS
SELECT * FROM overlap_of('shared_counts')
ORDER BY model, strategy, seed, definition, scope, k_percent;
