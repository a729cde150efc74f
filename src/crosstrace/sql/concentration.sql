-- How concentrated a top-k set is over units, for the shared set and, as its references, for
-- each task's own top-k set and for the shared counts the cell null expects (n_bio·n_qa/n per
-- head slice or neuron: a product of two concentrated sets is more concentrated than either
-- even when they are independent) (column "set": shared | bio | qa | null). Units:
--   head:   an attention head slice of one module, (layer, module, head); Llama k/v heads are
--           KV heads, so each module keeps its own index space
--   neuron: an MLP neuron, (layer, neuron) over its up, gate and down elements
--   layer:  a transformer layer (every ranked module)
-- gini over the units' counts (0 = even, →1 = all in one unit); entropy in bits, and
-- normalised by log2(n_units); top10_share = share held by the 10 largest units.
CREATE TABLE concentration AS
WITH cells AS (
    SELECT model, strategy, seed, definition, scope, k_percent, layer, module, head, neuron,
           n_shared, n_bio, n_qa, n_bio::DOUBLE * n_qa / n_params AS expected
    FROM shared_counts
),
units AS (
    SELECT model, strategy, seed, definition, scope, k_percent, 'head' AS unit,
           sum(n_shared)::DOUBLE AS shared, sum(n_bio)::DOUBLE AS bio, sum(n_qa)::DOUBLE AS qa,
           sum(expected) AS "null"
    FROM cells WHERE head IS NOT NULL AND module LIKE 'attn.%'
    GROUP BY model, strategy, seed, definition, scope, k_percent, layer, module, head
    UNION ALL
    SELECT model, strategy, seed, definition, scope, k_percent, 'neuron' AS unit,
           sum(n_shared), sum(n_bio), sum(n_qa), sum(expected)
    FROM cells WHERE neuron IS NOT NULL
    GROUP BY model, strategy, seed, definition, scope, k_percent, layer, neuron
    UNION ALL
    SELECT model, strategy, seed, definition, scope, k_percent, 'layer' AS unit,
           sum(n_shared), sum(n_bio), sum(n_qa), sum(expected)
    FROM cells WHERE layer IS NOT NULL
    GROUP BY model, strategy, seed, definition, scope, k_percent, layer
),
long AS (
    UNPIVOT units ON shared, bio, qa, "null" INTO NAME "set" VALUE x
),
ranked AS (
    SELECT *,
           row_number() OVER w_asc AS i,
           row_number() OVER w_desc AS r,
           count(*) OVER w_all AS n_units,
           sum(x) OVER w_all AS total
    FROM long
    WINDOW w_asc AS (PARTITION BY model, strategy, seed, definition, scope, k_percent, unit,
                     "set" ORDER BY x),
           w_desc AS (PARTITION BY model, strategy, seed, definition, scope, k_percent, unit,
                      "set" ORDER BY x DESC),
           w_all AS (PARTITION BY model, strategy, seed, definition, scope, k_percent, unit,
                     "set")
)
SELECT model, strategy, seed, definition, scope, k_percent, unit, "set",
       any_value(n_units)::BIGINT AS n_units,
       round(any_value(total))::BIGINT AS n_members,
       CASE WHEN any_value(total) > 0 THEN
           2.0 * sum(i * x) / (any_value(n_units) * any_value(total))
           - (any_value(n_units) + 1.0) / any_value(n_units) END AS gini,
       CASE WHEN any_value(total) > 0 THEN
           abs(sum(CASE WHEN x > 0 THEN (x / total) * log2(x / total) ELSE 0 END)) END
           AS entropy_bits,
       CASE WHEN any_value(total) > 0 AND any_value(n_units) > 1 THEN
           abs(sum(CASE WHEN x > 0 THEN (x / total) * log2(x / total) ELSE 0 END))
           / log2(any_value(n_units)) END AS entropy_norm,
       CASE WHEN any_value(total) > 0 THEN
           sum(x) FILTER (WHERE r <= 10) / any_value(total) END AS top10_share
FROM ranked
GROUP BY model, strategy, seed, definition, scope, k_percent, unit, "set"
ORDER BY model, strategy, seed, definition, scope, k_percent, unit, "set";
