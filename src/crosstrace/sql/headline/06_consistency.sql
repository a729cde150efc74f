-- Cosine of the BIO and QA gradients over all parameters on the fixed probe batches (people whose QA was trained / held out; *_values: the BIO loss on the attribute values only), at the first and the last record of each run, with the two gradients' L2 norms at the last record
WITH per_record AS (
    SELECT model, strategy, seed, phase, step, source,
           sum(dot) / nullif(sqrt(sum(norm_bio) * sum(norm_qa)), 0) AS cosine,
           sqrt(sum(norm_bio)) AS grad_norm_bio, sqrt(sum(norm_qa)) AS grad_norm_qa
    FROM consistency WHERE source <> 'step' GROUP BY ALL
), ordered AS (
    SELECT *, row_number() OVER w_first AS first_rank, row_number() OVER w_last AS last_rank
    FROM per_record
    WINDOW w_first AS (PARTITION BY model, strategy, seed, source
                       ORDER BY CASE phase WHEN 'qa' THEN 1 ELSE 0 END, step),
           w_last AS (PARTITION BY model, strategy, seed, source
                      ORDER BY CASE phase WHEN 'qa' THEN 1 ELSE 0 END DESC, step DESC)
)
SELECT model, strategy, source, count(*) FILTER (WHERE last_rank = 1) AS seeds,
       round(avg(cosine) FILTER (WHERE first_rank = 1), 3) AS first,
       interval_text(avg(cosine) FILTER (WHERE last_rank = 1),
                     avg(cosine) FILTER (WHERE last_rank = 1)
                         - ci_half(stddev_samp(cosine) FILTER (WHERE last_rank = 1),
                                   count(*) FILTER (WHERE last_rank = 1)),
                     avg(cosine) FILTER (WHERE last_rank = 1)
                         + ci_half(stddev_samp(cosine) FILTER (WHERE last_rank = 1),
                                   count(*) FILTER (WHERE last_rank = 1)),
                     3) AS "last [95 % CI]",
       round(avg(grad_norm_bio) FILTER (WHERE last_rank = 1), 4) AS "last ‖g_bio‖",
       round(avg(grad_norm_qa) FILTER (WHERE last_rank = 1), 4) AS "last ‖g_qa‖"
FROM ordered
GROUP BY ALL
ORDER BY model, source, strategy;
