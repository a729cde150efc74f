-- The training curve per run: run_step counts steps over the whole run (the QA stage of
-- two-stage training continues after the BIO stage's last step), fraction the share of the
-- run's steps done.
CREATE TABLE training_curve AS
WITH offsets AS (
    SELECT model, strategy, seed,
           coalesce(max(step) FILTER (WHERE phase = 'bio'), 0) AS bio_steps,
           max(step) FILTER (WHERE phase <> 'bio') AS other_steps
    FROM training_curve_raw GROUP BY ALL
)
SELECT c.model, c.strategy, c.seed, c.phase, c.step,
       c.step + CASE WHEN c.phase = 'qa' THEN o.bio_steps ELSE 0 END AS run_step,
       (c.step + CASE WHEN c.phase = 'qa' THEN o.bio_steps ELSE 0 END)::DOUBLE
           / nullif(CASE WHEN c.strategy = 'stage' THEN o.bio_steps + coalesce(o.other_steps, 0)
                         ELSE o.other_steps END, 0) AS fraction,
       c.split, c.n, c.accuracy
FROM training_curve_raw AS c JOIN offsets AS o USING (model, strategy, seed)
ORDER BY ALL;
