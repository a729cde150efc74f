-- One phase's training log (registered as train_log_in by crosstrace.database) of a run
-- ($model, $strategy, $seed): its optimizer steps, the real tokens of each task, seconds.
INSERT INTO training_compute
SELECT $model, $strategy, $seed, phase, count(*) AS steps, sum(tokens_bio) AS tokens_bio,
       sum(tokens_qa) AS tokens_qa, sum(seconds) AS seconds
FROM train_log_in GROUP BY phase;
