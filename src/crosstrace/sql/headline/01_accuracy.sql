-- QA exact match (id: people whose QA was trained; ood: held-out people) and bio memorisation (bio_id, bio_ood: first attribute token of the bios) at the end of training (θT) and, for two-stage training, at the end of its BIO stage (θ_BIO): mean over seeds [95 % interval]
SELECT model, strategy, CASE checkpoint WHEN 'bio_end' THEN 'θ_BIO' ELSE 'θT' END AS checkpoint,
       split, any_value(n_seeds) AS seeds,
       interval_text(accuracy, ci_low, ci_high, 3) AS "mean [95 % CI]"
FROM accuracy_summary
WHERE attribute = 'all'
GROUP BY model, strategy, checkpoint, split, accuracy, ci_low, ci_high
ORDER BY model, strategy, checkpoint DESC,
         CASE split WHEN 'id' THEN 0 WHEN 'ood' THEN 1 WHEN 'bio_id' THEN 2 ELSE 3 END;
