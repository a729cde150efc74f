-- From the top-k members of each task (table topk, filled by topk_insert.sql), per
-- (run, k, layer, module, head) cell: n_params (ranked elements in the cell), n_bio, n_qa and
-- n_shared (in both top-k sets: same param, row, col).
CREATE TABLE shared_counts AS
WITH per_task AS (
    SELECT model, strategy, seed, k_percent, lk, module, hk,
           count(*) FILTER (WHERE task = 'bio') AS n_bio,
           count(*) FILTER (WHERE task = 'qa') AS n_qa
    FROM topk
    GROUP BY ALL
),
shared AS (
    SELECT b.model, b.strategy, b.seed, b.k_percent, b.lk, b.module, b.hk, count(*) AS n_shared
    FROM topk AS b
    JOIN topk AS q
      ON b.model = q.model AND b.strategy = q.strategy AND b.seed = q.seed
     AND b.k_percent = q.k_percent AND b.param = q.param AND b.row = q.row AND b.col = q.col
    WHERE b.task = 'bio' AND q.task = 'qa'
    GROUP BY ALL
),
cells AS (
    SELECT model, strategy, seed, coalesce(layer, -1) AS lk, module, coalesce(head, -1) AS hk,
           sum(n_params)::BIGINT AS n_params
    FROM trace_cells
    WHERE task = 'bio' AND module IN (SELECT module FROM rank_modules)
    GROUP BY ALL
)
SELECT c.model, c.strategy, c.seed, k.k_percent,
       nullif(c.lk, -1)::SMALLINT AS layer, c.module, nullif(c.hk, -1)::SMALLINT AS head,
       c.n_params,
       coalesce(p.n_bio, 0)::BIGINT AS n_bio,
       coalesce(p.n_qa, 0)::BIGINT AS n_qa,
       coalesce(s.n_shared, 0)::BIGINT AS n_shared
FROM cells AS c
JOIN (SELECT DISTINCT model, strategy, seed, k_percent FROM thresholds) AS k
  ON c.model = k.model AND c.strategy = k.strategy AND c.seed = k.seed
LEFT JOIN per_task AS p
  ON p.model = c.model AND p.strategy = c.strategy AND p.seed = c.seed
 AND p.k_percent = k.k_percent AND p.lk = c.lk AND p.module = c.module AND p.hk = c.hk
LEFT JOIN shared AS s
  ON s.model = c.model AND s.strategy = c.strategy AND s.seed = c.seed
 AND s.k_percent = k.k_percent AND s.lk = c.lk AND s.module = c.module AND s.hk = c.hk
ORDER BY c.model, c.strategy, c.seed, k.k_percent, c.lk, c.module, c.hk;

DROP TABLE topk;
