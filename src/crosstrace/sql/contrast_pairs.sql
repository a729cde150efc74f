-- Mixed minus two-stage training, paired within seed (a seed shares θ0 and the world), one row
-- per model, contrast and seed: the mixed run's value, the two-stage run's, and their
-- difference. The primary contrast is the held-out recall the shared set's reset removes
-- beyond its stratum-matched random control, at analysis.primary_k, the primary definition
-- and the global scope; crosstrace.contrasts gives the intervals and Holm's correction of the
-- others.
CREATE TABLE contrast_pairs AS
WITH settings AS (
    SELECT (SELECT primary_definition FROM analysis_settings) AS d,
           (SELECT value::DOUBLE FROM crosstrace_meta WHERE key = 'primary_k') AS k
),
excess AS (  -- ablation: shared minus random accuracy drop, per run, k and split
    SELECT model, strategy, seed, k_percent, split,
           max(accuracy_drop) FILTER (WHERE condition = 'shared')
           - max(accuracy_drop) FILTER (WHERE condition = 'random') AS value
    FROM ablation, settings
    WHERE scope = 'global' AND definition = settings.d AND counterfactual IN ('none', 'reset')
    GROUP BY ALL
),
values AS (
    SELECT model, strategy, seed,
           printf('ablation excess, %s, k = %g %%', split, k_percent) AS contrast,
           split = 'ood' AND k_percent = (SELECT k FROM settings) AS is_primary, value
    FROM excess
    UNION ALL
    SELECT model, strategy, seed, printf('enrichment (%s null), k = %g %%', null_kind, k_percent),
           false, value
    FROM (
        SELECT o.model, o.strategy, o.seed, o.k_percent, o.enrichment AS stratified,
               o.enrichment_margins AS margins, o.enrichment_same_sign AS "same-sign",
               o.enrichment_opposite_sign AS "opposite-sign"
        FROM overlap AS o, settings
        WHERE o.scope = 'global' AND o.definition = settings.d
    ) UNPIVOT (value FOR null_kind IN (stratified, margins, "same-sign", "opposite-sign"))
    UNION ALL  -- the people control: same-people minus other-people enrichment (stratified)
    SELECT model, strategy, seed,
           printf('people control (same − other enrichment, %s), k = %g %%', definition,
                  k_percent), false, enrichment_difference
    FROM people_control WHERE scope = 'global'
    UNION ALL  -- unit ablation: the top units' held-out loss beyond layer-matched random units
    SELECT model, strategy, seed,
           printf('unit ablation excess, %d %s(s), ood', n_units, unit), false, excess
    FROM unit_ablation WHERE split = 'ood'
    UNION ALL
    SELECT model, strategy, seed, printf('accuracy, %s', split), false, accuracy
    FROM accuracy
    WHERE attribute = 'all' AND checkpoint = 'final' AND split IN ('ood', 'bio_ood')
)
SELECT m.model, m.contrast, m.is_primary, m.seed, m.value AS mix, s.value AS stage,
       m.value - s.value AS difference
FROM values AS m JOIN values AS s USING (model, contrast, seed)
WHERE m.strategy = 'mix' AND s.strategy = 'stage' AND m.value IS NOT NULL
  AND s.value IS NOT NULL
ORDER BY ALL;
