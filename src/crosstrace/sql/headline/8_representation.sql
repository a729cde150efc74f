-- Name-token hidden states at the last layer: cosine between a person's BIO and QA contexts (baseline: another person), and BIO→QA probe transfer on held-out people (baseline: the most frequent value); mean over seeds [95 % interval]
WITH last_layer AS (
    SELECT model, max(layer) AS layer FROM representation_summary GROUP BY model
)
SELECT r.model, r.strategy, any_value(r.n_seeds) AS seeds, r.layer,
       interval_text(max(value) FILTER (WHERE measure = 'cosine' AND split = 'ood'),
                     max(ci_low) FILTER (WHERE measure = 'cosine' AND split = 'ood'),
                     max(ci_high) FILTER (WHERE measure = 'cosine' AND split = 'ood'), 3)
           AS cosine_ood,
       round(max(baseline) FILTER (WHERE measure = 'cosine' AND split = 'ood'), 3)
           AS cosine_other_person,
       interval_text(max(value) FILTER (WHERE measure = 'transfer'),
                     max(ci_low) FILTER (WHERE measure = 'transfer'),
                     max(ci_high) FILTER (WHERE measure = 'transfer'), 3) AS probe_transfer,
       round(max(baseline) FILTER (WHERE measure = 'transfer'), 3) AS majority_baseline
FROM representation_summary AS r JOIN last_layer USING (model, layer)
GROUP BY r.model, r.strategy, r.layer
ORDER BY r.model, r.strategy;
