-- Ablation results with the drop from the unablated model (condition 'none') of the same run,
-- k and split: accuracy_drop = accuracy(none) - accuracy(condition).
CREATE TABLE ablation AS
SELECT a.*, n.accuracy - a.accuracy AS accuracy_drop
FROM ablation_raw AS a
LEFT JOIN ablation_raw AS n
  ON n.condition = 'none' AND n.model = a.model AND n.strategy = a.strategy
 AND n.seed = a.seed AND n.k_percent = a.k_percent AND n.split = a.split
ORDER BY a.model, a.strategy, a.seed, a.k_percent, a.split, a.condition;
DROP TABLE ablation_raw;
