-- Name-token hidden states at the last layer, held-out people: the cosine between a person's BIO and QA contexts minus the cosine with another person's (0 = no more alike than two people), and the BIO→QA probe's transfer divided by its accuracy on the BIO states it was fitted to (1 = transfers fully; the majority baseline divided the same way beside it); mean over seeds [95 % interval]; checkpoint bio_end: two-stage training's θ_BIO, before the QA stage
WITH last_layer AS (
    SELECT model, max(layer) AS layer FROM representation_summary GROUP BY model
)
SELECT r.model, r.strategy, r.checkpoint, any_value(r.n_seeds) AS seeds, r.layer,
       round(max(value) FILTER (WHERE measure = 'cosine' AND split = 'ood'), 3) AS cosine,
       interval_text(
           max(value) FILTER (WHERE measure = 'cosine_minus_other_person' AND split = 'ood'),
           max(ci_low) FILTER (WHERE measure = 'cosine_minus_other_person' AND split = 'ood'),
           max(ci_high) FILTER (WHERE measure = 'cosine_minus_other_person' AND split = 'ood'),
           3) AS "cosine − other person [95 % CI]",
       interval_text(max(value) FILTER (WHERE measure = 'transfer_over_train_accuracy'),
                     max(ci_low) FILTER (WHERE measure = 'transfer_over_train_accuracy'),
                     max(ci_high) FILTER (WHERE measure = 'transfer_over_train_accuracy'), 3)
           AS "transfer / train accuracy [95 % CI]",
       round(max(value) FILTER (WHERE measure = 'transfer'), 3) AS transfer,
       round(max(baseline) FILTER (WHERE measure = 'transfer'), 3) AS majority_baseline
FROM representation_summary AS r JOIN last_layer USING (model, layer)
GROUP BY r.model, r.strategy, r.checkpoint, r.layer
ORDER BY r.model, r.strategy, r.checkpoint DESC;
