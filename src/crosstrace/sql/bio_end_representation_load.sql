-- θ_BIO's representation tables ($path) of one two-stage run.
INSERT INTO representation
SELECT $model, $strategy, $seed, measure, layer, attribute, split, value, baseline, n, 'bio_end'
FROM read_parquet($path);
