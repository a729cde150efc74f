-- One run's different-people control ($path, written by crosstrace.people_control): its
-- per-cell counts, with the pairing (same | other) joined to the definition (endpoint |
-- trajectory) as 'definition/pairing' in the definition column, so that the overlap of each
-- pairing is computed by overlap_of like the main ranking's.
INSERT INTO people_control_counts
SELECT model, strategy, seed, definition || '/' || pairing AS definition, scope, k_percent,
       param, layer, module,
       head, neuron, query_heads, n_params, n_bio, n_qa, n_shared, n_shared_same_sign,
       n_bio_positive, n_qa_positive, expected_margins
FROM read_parquet($path);
