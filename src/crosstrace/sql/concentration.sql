-- How concentrated the shared parameters are, per run and k, over two kinds of unit:
--   unit = 'head':  attention head slices, one per (layer, module, head) with a head
--   unit = 'layer': transformer layers (all ranked modules)
-- gini over the units' n_shared (0 = even, →1 = all in one unit); entropy in bits and
-- normalised by log2(n_units); top10_share = share of n_shared held by the 10 largest units.
CREATE TABLE concentration AS
WITH units AS (
    SELECT model, strategy, seed, k_percent, 'head' AS unit, sum(n_shared) AS x
    FROM shared_counts
    WHERE head IS NOT NULL AND module LIKE 'attn.%'
    GROUP BY model, strategy, seed, k_percent, layer, module, head
    UNION ALL
    SELECT model, strategy, seed, k_percent, 'layer' AS unit, sum(n_shared) AS x
    FROM shared_counts
    WHERE layer IS NOT NULL
    GROUP BY model, strategy, seed, k_percent, layer
),
ranked AS (
    SELECT *,
           row_number() OVER w_asc AS i,
           row_number() OVER w_desc AS r,
           count(*) OVER w_all AS n_units,
           sum(x) OVER w_all AS total
    FROM units
    WINDOW w_asc AS (PARTITION BY model, strategy, seed, k_percent, unit ORDER BY x),
           w_desc AS (PARTITION BY model, strategy, seed, k_percent, unit ORDER BY x DESC),
           w_all AS (PARTITION BY model, strategy, seed, k_percent, unit)
)
SELECT model, strategy, seed, k_percent, unit,
       any_value(n_units)::BIGINT AS n_units,
       any_value(total)::BIGINT AS n_shared,
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
GROUP BY model, strategy, seed, k_percent, unit
ORDER BY model, strategy, seed, k_percent, unit;
