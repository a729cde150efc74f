-- One run's ranking outputs ($ranking, $cells, $agreement: Parquet paths) for the run
-- ($model, $strategy, $seed).
INSERT INTO ranking
SELECT $model, $strategy, $seed, definition, scope, k_percent, task, param, layer, module,
       n_ranked, n_tensor, k_size, threshold, n_top
FROM read_parquet($ranking);
INSERT INTO shared_counts
SELECT $model, $strategy, $seed, definition, scope, k_percent, param, layer, module, head,
       neuron, query_heads, n_params, n_bio, n_qa, n_shared, n_shared_same_sign,
       n_bio_positive, n_qa_positive, expected_margins
FROM read_parquet($cells);
INSERT INTO definition_agreement
SELECT $model, $strategy, $seed, scope, k_percent, task, definition_a, definition_b, n_a, n_b,
       n_both, jaccard
FROM read_parquet($agreement);
