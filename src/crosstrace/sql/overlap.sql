-- Shared fraction vs k. shared_fraction = n_shared / n_ranked; for two independent top-k%
-- sets its expectation is (k/100)^2 (chance_fraction). frac_of_bio = n_shared / n_bio
-- (chance k/100); jaccard = n_shared / |bio ∪ qa|.
CREATE TABLE overlap AS
WITH s AS (
    SELECT model, strategy, seed, k_percent,
           sum(n_params)::BIGINT AS n_ranked, sum(n_bio)::BIGINT AS n_bio,
           sum(n_qa)::BIGINT AS n_qa, sum(n_shared)::BIGINT AS n_shared
    FROM shared_counts
    GROUP BY ALL
)
SELECT *,
       n_shared / n_ranked::DOUBLE AS shared_fraction,
       (k_percent / 100.0) ** 2 AS chance_fraction,
       (n_shared / n_ranked::DOUBLE) / ((k_percent / 100.0) ** 2) AS enrichment,
       n_shared / nullif(n_bio, 0)::DOUBLE AS frac_of_bio,
       n_shared / nullif(n_bio + n_qa - n_shared, 0)::DOUBLE AS jaccard
FROM s
ORDER BY model, strategy, seed, k_percent;
