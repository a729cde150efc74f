-- Cosine of the BIO and QA gradients per run, record step, source and module (summed over
-- layers and heads: cos = Σ dot / sqrt(Σ |g_bio|² · Σ |g_qa|²)), the share of elements
-- whose two gradients agree in sign, and each gradient's L2 norm over the module (a cosine near
-- 0 between a large and a vanishing gradient reads differently from one between equals). run_step counts steps over the whole run: the QA stage of
-- two-stage training continues after the BIO stage's last step.
CREATE TABLE consistency_by_module AS
WITH offsets AS (
    SELECT model, strategy, seed, max(step) FILTER (WHERE phase = 'bio') AS bio_steps
    FROM consistency GROUP BY ALL
)
SELECT c.model, c.strategy, c.seed, c.phase, c.step,
       c.step + CASE WHEN c.phase = 'qa' THEN coalesce(o.bio_steps, 0) ELSE 0 END AS run_step,
       c.source, c.module,
       sum(c.dot) / nullif(sqrt(sum(c.norm_bio) * sum(c.norm_qa)), 0) AS cosine,
       sum(c.n_sign_agree)::DOUBLE / sum(c.n_elements) AS sign_agreement,
       sqrt(sum(c.norm_bio)) AS grad_norm_bio, sqrt(sum(c.norm_qa)) AS grad_norm_qa
FROM consistency AS c JOIN offsets AS o USING (model, strategy, seed)
GROUP BY ALL
ORDER BY ALL;
