-- One unit-ablation file written by crosstrace.ablate (registered as unit_ablation_in by
-- crosstrace.database; one row per unit kind, n, condition, draw and split).
INSERT INTO unit_ablation_draws BY NAME SELECT * FROM unit_ablation_in;
