-- One run's consistency outputs ($consistency, $by_set, $representation, $token_dependence).
INSERT INTO consistency
SELECT $model, $strategy, $seed, step, phase, source, param, layer, module, head, n_elements,
       dot, norm_bio, norm_qa, n_sign_agree
FROM read_parquet($consistency);
INSERT INTO consistency_by_set
SELECT $model, $strategy, $seed, definition, scope, k_percent, "set", source, n_elements, dot,
       norm_bio, norm_qa, n_sign_agree, cosine
FROM read_parquet($by_set);
INSERT INTO representation
SELECT $model, $strategy, $seed, measure, layer, attribute, split, value, baseline, n, 'final'
FROM read_parquet($representation);
INSERT INTO token_dependence
SELECT $model, $strategy, $seed, person_id, attribute, position, token_class, token, logp, delta
FROM read_parquet($token_dependence);
