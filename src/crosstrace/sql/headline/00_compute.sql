-- The training behind each number: optimizer steps and real tokens of each task, over all phases of a run (two-stage: BIO stage + QA stage), mean over seeds
WITH per_seed AS (
    SELECT model, strategy, seed,
           string_agg(phase || ' ' || steps, ' + ' ORDER BY phase) AS phases,
           sum(steps) AS steps, sum(tokens_bio) AS tokens_bio, sum(tokens_qa) AS tokens_qa
    FROM training_compute GROUP BY ALL
)
SELECT model, strategy, count(*) AS seeds, any_value(phases) AS "steps per phase",
       round(avg(steps)) AS steps, round(avg(tokens_bio)) AS "BIO tokens",
       round(avg(tokens_qa)) AS "QA tokens"
FROM per_seed GROUP BY ALL ORDER BY ALL;
