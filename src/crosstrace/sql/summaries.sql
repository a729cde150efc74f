-- Mean and 95 % interval over seeds (Student t, df = n_seeds − 1; null with one seed) of
-- the per-run numbers: accuracy, overlap (enrichment), concentration and ablation.
-- t(0.975, df): exact for df <= 30, the df = 30 value (conservative) up to 60, then 2.0.
CREATE MACRO t975(df) AS
    CASE WHEN df BETWEEN 1 AND 30 THEN
        [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042][df]
         WHEN df <= 60 THEN 2.042 WHEN df > 60 THEN 2.0 END;
CREATE MACRO ci_half(sd, n) AS CASE WHEN n > 1 THEN t975(n - 1) * sd / sqrt(n) END;
CREATE TABLE accuracy_summary AS
SELECT model, strategy, checkpoint, split, attribute, count(*) AS n_seeds,
       avg(accuracy) AS accuracy, avg(accuracy) - ci_half(stddev_samp(accuracy), count(*))
           AS ci_low, avg(accuracy) + ci_half(stddev_samp(accuracy), count(*)) AS ci_high,
       string_agg(DISTINCT precision, ',' ORDER BY precision) AS precision
FROM accuracy GROUP BY model, strategy, checkpoint, split, attribute ORDER BY ALL;
CREATE TABLE training_curve_summary AS
SELECT model, strategy, phase, step, run_step, split, count(*) AS n_seeds,
       avg(fraction) AS fraction, avg(accuracy) AS accuracy,
       avg(accuracy) - ci_half(stddev_samp(accuracy), count(*)) AS ci_low,
       avg(accuracy) + ci_half(stddev_samp(accuracy), count(*)) AS ci_high
FROM training_curve GROUP BY ALL ORDER BY ALL;
CREATE TABLE overlap_summary AS
SELECT model, strategy, definition, scope, k_percent, count(*) AS n_seeds,
       avg(n_shared) AS n_shared, avg(expected_shared) AS expected_shared,
       avg(enrichment) AS enrichment,
       avg(enrichment) - ci_half(stddev_samp(enrichment), count(*)) AS ci_low,
       avg(enrichment) + ci_half(stddev_samp(enrichment), count(*)) AS ci_high,
       avg(enrichment_cells) AS enrichment_cells,
       avg(enrichment_margins) AS enrichment_margins,
       avg(enrichment_margins) - ci_half(stddev_samp(enrichment_margins), count(*))
           AS margins_ci_low,
       avg(enrichment_margins) + ci_half(stddev_samp(enrichment_margins), count(*))
           AS margins_ci_high,
       avg(enrichment_same_sign) AS enrichment_same_sign,
       avg(enrichment_same_sign) - ci_half(stddev_samp(enrichment_same_sign), count(*))
           AS same_sign_ci_low,
       avg(enrichment_same_sign) + ci_half(stddev_samp(enrichment_same_sign), count(*))
           AS same_sign_ci_high,
       avg(enrichment_opposite_sign) AS enrichment_opposite_sign,
       avg(enrichment_opposite_sign)
           - ci_half(stddev_samp(enrichment_opposite_sign), count(*)) AS opposite_sign_ci_low,
       avg(enrichment_opposite_sign)
           + ci_half(stddev_samp(enrichment_opposite_sign), count(*)) AS opposite_sign_ci_high,
       avg(n_shared_same_sign::DOUBLE / nullif(n_shared, 0)) AS same_sign_share,
       avg(enrichment_global) AS enrichment_global
FROM overlap GROUP BY ALL ORDER BY ALL;
CREATE TABLE concentration_summary AS
SELECT model, strategy, definition, scope, k_percent, unit, "set", count(*) AS n_seeds,
       avg(gini) AS gini, avg(gini) - ci_half(stddev_samp(gini), count(*)) AS ci_low,
       avg(gini) + ci_half(stddev_samp(gini), count(*)) AS ci_high,
       avg(top10_share) AS top10_share, avg(entropy_norm) AS entropy_norm
FROM concentration GROUP BY ALL ORDER BY ALL;
CREATE TABLE ablation_summary AS
SELECT model, strategy, definition, scope, k_percent, condition, counterfactual, split,
       count(*) AS n_seeds, avg(accuracy_drop) AS accuracy_drop,
       avg(accuracy_drop) - ci_half(stddev_samp(accuracy_drop), count(*)) AS ci_low,
       avg(accuracy_drop) + ci_half(stddev_samp(accuracy_drop), count(*)) AS ci_high,
       avg(accuracy) AS accuracy
FROM ablation GROUP BY ALL ORDER BY ALL;
CREATE TABLE unit_ablation_summary AS
SELECT model, strategy, definition, scope, k_percent, unit, n_units, split, count(*) AS n_seeds,
       avg(drop_top) AS drop_top, avg(drop_random) AS drop_random, avg(excess) AS excess,
       avg(excess) - ci_half(stddev_samp(excess), count(*)) AS ci_low,
       avg(excess) + ci_half(stddev_samp(excess), count(*)) AS ci_high,
       max(rank_p) AS rank_p_max
FROM unit_ablation GROUP BY ALL ORDER BY ALL;
CREATE TABLE people_control_summary AS
SELECT model, strategy, definition, scope, k_percent, count(*) AS n_seeds,
       avg(enrichment_same) AS enrichment_same, avg(enrichment_other) AS enrichment_other,
       avg(enrichment_difference) AS enrichment_difference,
       avg(enrichment_difference) - ci_half(stddev_samp(enrichment_difference), count(*))
           AS ci_low,
       avg(enrichment_difference) + ci_half(stddev_samp(enrichment_difference), count(*))
           AS ci_high,
       avg(enrichment_margins_same) AS enrichment_margins_same,
       avg(enrichment_margins_other) AS enrichment_margins_other
FROM people_control GROUP BY ALL ORDER BY ALL;
CREATE TABLE consistency_summary AS
SELECT model, strategy, phase, step, run_step, source, module, count(*) AS n_seeds,
       avg(cosine) AS cosine, avg(cosine) - ci_half(stddev_samp(cosine), count(*)) AS ci_low,
       avg(cosine) + ci_half(stddev_samp(cosine), count(*)) AS ci_high,
       avg(sign_agreement) AS sign_agreement, avg(grad_norm_bio) AS grad_norm_bio,
       avg(grad_norm_qa) AS grad_norm_qa
FROM consistency_by_module GROUP BY ALL ORDER BY ALL;
CREATE TABLE representation_summary AS
WITH measured AS (
    SELECT model, strategy, checkpoint, seed, measure, layer, split, avg(value) AS value,
           avg(baseline) AS baseline
    FROM representation GROUP BY ALL
),
per_run AS (  -- with the two derived measures: the cosine beyond another person's, and the
              -- probe's transfer relative to its own training accuracy
    SELECT * FROM measured
    UNION ALL
    SELECT model, strategy, checkpoint, seed, 'cosine_minus_other_person', layer, split,
           value - baseline, 0.0
    FROM measured WHERE measure = 'cosine'
    UNION ALL
    SELECT t.model, t.strategy, t.checkpoint, t.seed, 'transfer_over_train_accuracy', t.layer,
           t.split, t.value / nullif(a.value, 0), NULL
    FROM measured AS t
    JOIN measured AS a USING (model, strategy, checkpoint, seed, layer, split)
    WHERE t.measure = 'transfer' AND a.measure = 'train_accuracy'
)
SELECT model, strategy, checkpoint, measure, layer, split, count(*) AS n_seeds,
       avg(value) AS value,
       avg(value) - ci_half(stddev_samp(value), count(*)) AS ci_low,
       avg(value) + ci_half(stddev_samp(value), count(*)) AS ci_high,
       avg(baseline) AS baseline
FROM per_run GROUP BY ALL ORDER BY ALL;
CREATE TABLE token_dependence_summary AS
WITH per_run AS (
    SELECT model, strategy, seed, token_class, count(*) AS n, avg(delta) AS delta
    FROM token_dependence GROUP BY ALL
)
SELECT model, strategy, token_class, count(*) AS n_seeds, avg(n) AS n_per_seed,
       avg(delta) AS delta, avg(delta) - ci_half(stddev_samp(delta), count(*)) AS ci_low,
       avg(delta) + ci_half(stddev_samp(delta), count(*)) AS ci_high
FROM per_run GROUP BY ALL ORDER BY ALL;
CREATE TABLE consistency_by_set_summary AS
SELECT model, strategy, definition, scope, k_percent, "set", source, count(*) AS n_seeds,
       avg(cosine) AS cosine, avg(cosine) - ci_half(stddev_samp(cosine), count(*)) AS ci_low,
       avg(cosine) + ci_half(stddev_samp(cosine), count(*)) AS ci_high,
       avg(n_sign_agree::DOUBLE / nullif(n_elements, 0)) AS sign_agreement,
       avg(sqrt(norm_bio)) AS grad_norm_bio, avg(sqrt(norm_qa)) AS grad_norm_qa
FROM consistency_by_set GROUP BY ALL ORDER BY ALL;
