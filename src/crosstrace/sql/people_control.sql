-- The different-people control: per run, definition, scope and k, the overlap of BIO(A) with
-- QA(A) (same people) and with QA(B) (other people, the same templates), each against the
-- nulls of overlap.sql (endpoint: gradients at θT on two random halves A and B of the trained
-- people; trajectory: the training trace of the same halves; crosstrace.people_control), side
-- by side, and same − other of the enrichment over the stratified and the margins nulls.
CREATE TABLE people_control AS
WITH o AS (
    SELECT * EXCLUDE (definition), split_part(definition, '/', 1) AS definition,
           split_part(definition, '/', 2) AS pairing
    FROM overlap_of('people_control_counts')
)
SELECT s.model, s.strategy, s.seed, s.definition, s.scope, s.k_percent, s.n_ranked,
       s.n_bio, s.n_qa AS n_qa_same, x.n_qa AS n_qa_other,
       s.n_shared AS n_shared_same, x.n_shared AS n_shared_other,
       s.expected_shared AS expected_same, x.expected_shared AS expected_other,
       s.enrichment AS enrichment_same, x.enrichment AS enrichment_other,
       s.enrichment - x.enrichment AS enrichment_difference,
       s.enrichment_margins AS enrichment_margins_same,
       x.enrichment_margins AS enrichment_margins_other,
       s.enrichment_margins - x.enrichment_margins AS enrichment_margins_difference
FROM o AS s JOIN o AS x USING (model, strategy, seed, definition, scope, k_percent)
WHERE s.pairing = 'same' AND x.pairing = 'other'
ORDER BY ALL;
