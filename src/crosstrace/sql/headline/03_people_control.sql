-- Different-people control on two random halves A and B of the trained people (endpoint: gradients at θT; trajectory: the training trace of each half): enrichment over the stratified null of BIO(A) ∩ QA(A), the same people, and of BIO(A) ∩ QA(B), other people with the same templates; same − other: mean over seeds [95 % interval]; and the same two over the margins null
SELECT model, strategy, definition, scope, k_percent AS k, n_seeds AS seeds,
       round(enrichment_same, 2) AS "same people", round(enrichment_other, 2) AS "other people",
       interval_text(enrichment_difference, ci_low, ci_high, 2) AS "same − other [95 % CI]",
       round(enrichment_margins_same, 2) AS "margins: same",
       round(enrichment_margins_other, 2) AS "margins: other"
FROM people_control_summary
ORDER BY model, definition, scope, k_percent, strategy;
