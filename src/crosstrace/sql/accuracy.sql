-- Accuracy of one run's predictions (registered as predictions_in by crosstrace.database, with
-- the column precision) of a run ($model, $strategy, $seed), per split and attribute, plus
-- attribute = 'all'.
INSERT INTO accuracy
SELECT $model, $strategy, $seed, split, coalesce(attribute, 'all') AS attribute,
       count(*) AS n,
       sum(exact_match::INTEGER) AS correct,
       avg(exact_match::INTEGER::DOUBLE) AS accuracy,
       sum(first_token_correct::INTEGER) AS first_token_correct,
       avg(first_token_correct::INTEGER::DOUBLE) AS first_token_accuracy,
       min(precision) AS precision, $checkpoint AS checkpoint
FROM predictions_in
GROUP BY GROUPING SETS ((split, attribute), (split))
ORDER BY split, attribute;
