-- QA exact match (id: people whose QA was trained; ood: held-out people) and bio memorisation (bio_id, bio_ood): mean over seeds [95 % interval]
SELECT model, strategy, split, any_value(n_seeds) AS seeds,
       interval_text(accuracy, ci_low, ci_high, 3) AS "mean [95 % CI]"
FROM accuracy_summary
WHERE attribute = 'all'
GROUP BY model, strategy, split, accuracy, ci_low, ci_high
ORDER BY model, strategy, CASE split WHEN 'id' THEN 0 WHEN 'ood' THEN 1 WHEN 'bio_id' THEN 2 ELSE 3 END;
