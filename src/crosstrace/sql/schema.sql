-- Tables filled by crosstrace.database.build_database (one statement per ';').
CREATE TABLE crosstrace_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
-- one row per dumped (run, task): how it was dumped (top_percent null = every element)
CREATE TABLE trace_runs (
    model VARCHAR, strategy VARCHAR, seed BIGINT, task VARCHAR,
    arch VARCHAR, top_percent DOUBLE, dump_threshold FLOAT, n_files BIGINT
);
-- the ranking stage's thresholds and per-tensor top-k counts (results/runs/…/ranking.parquet)
CREATE TABLE ranking (
    model VARCHAR, strategy VARCHAR, seed BIGINT, definition VARCHAR, scope VARCHAR,
    k_percent DOUBLE, task VARCHAR, param VARCHAR, layer INTEGER, module VARCHAR,
    n_ranked BIGINT, n_tensor BIGINT, k_size BIGINT, threshold FLOAT, n_top BIGINT
);
-- per cell (head slice, MLP neuron, or the tensor): ranked elements and top-k members
CREATE TABLE shared_counts (
    model VARCHAR, strategy VARCHAR, seed BIGINT, definition VARCHAR, scope VARCHAR,
    k_percent DOUBLE, param VARCHAR, layer INTEGER, module VARCHAR, head INTEGER,
    neuron INTEGER, query_heads INTEGER[], n_params BIGINT, n_bio BIGINT, n_qa BIGINT,
    n_shared BIGINT, n_shared_same_sign BIGINT, n_bio_positive BIGINT, n_qa_positive BIGINT,
    expected_margins DOUBLE
);
-- the different-people control (results/runs/…/people_control.parquet): the cells of
-- crosstrace.people_control, the pairing (same | other people) in place of the definition
CREATE TABLE people_control_counts AS SELECT * FROM shared_counts WITH NO DATA;
CREATE TABLE definition_agreement (
    model VARCHAR, strategy VARCHAR, seed BIGINT, scope VARCHAR, k_percent DOUBLE,
    task VARCHAR, definition_a VARCHAR, definition_b VARCHAR, n_a BIGINT, n_b BIGINT,
    n_both BIGINT, jaccard DOUBLE
);
CREATE TABLE accuracy (
    model VARCHAR, strategy VARCHAR, seed BIGINT, split VARCHAR, attribute VARCHAR,
    n BIGINT, correct BIGINT, accuracy DOUBLE, first_token_correct BIGINT,
    first_token_accuracy DOUBLE, precision VARCHAR, checkpoint VARCHAR
);
-- optimizer steps and tokens per run and phase (from each phase's train_log.parquet)
CREATE TABLE training_compute (
    model VARCHAR, strategy VARCHAR, seed BIGINT, phase VARCHAR, steps BIGINT,
    tokens_bio BIGINT, tokens_qa BIGINT, seconds DOUBLE
);
-- memorisation and recall during training (results/runs/…/training_curve.parquet)
CREATE TABLE training_curve_raw (
    model VARCHAR, strategy VARCHAR, seed BIGINT, phase VARCHAR, step BIGINT, split VARCHAR,
    n BIGINT, accuracy DOUBLE
);
CREATE TABLE ablation_draws (
    model VARCHAR, strategy VARCHAR, seed BIGINT, definition VARCHAR, scope VARCHAR,
    k_percent DOUBLE, condition VARCHAR, draw BIGINT, counterfactual VARCHAR, n_target BIGINT,
    n_reset BIGINT, shift_norm DOUBLE, split VARCHAR, n BIGINT, accuracy DOUBLE
);
-- whole heads and neurons reset to θ0 (results/runs/…/unit_ablation.parquet): the top n by
-- shared count and layer-matched random draws of n units, per split
CREATE TABLE unit_ablation_draws (
    model VARCHAR, strategy VARCHAR, seed BIGINT, definition VARCHAR, scope VARCHAR,
    k_percent DOUBLE, unit VARCHAR, n_units BIGINT, n_chosen BIGINT, condition VARCHAR,
    draw BIGINT,
    units VARCHAR, n_same_layer BIGINT, n_shared BIGINT, n_reset BIGINT, shift_norm DOUBLE,
    split VARCHAR, n BIGINT, accuracy DOUBLE
);
-- gradient consistency during training (results/runs/…/consistency.parquet): per record step,
-- source (step | probe_id | probe_ood) and tensor slice: dot product and squared norms
CREATE TABLE consistency (
    model VARCHAR, strategy VARCHAR, seed BIGINT, step BIGINT, phase VARCHAR, source VARCHAR,
    param VARCHAR, layer INTEGER, module VARCHAR, head INTEGER, n_elements BIGINT,
    dot DOUBLE, norm_bio DOUBLE, norm_qa DOUBLE, n_sign_agree BIGINT
);
CREATE TABLE consistency_by_set (
    model VARCHAR, strategy VARCHAR, seed BIGINT, definition VARCHAR, scope VARCHAR,
    k_percent DOUBLE, "set" VARCHAR, source VARCHAR, n_elements BIGINT, dot DOUBLE,
    norm_bio DOUBLE, norm_qa DOUBLE, n_sign_agree BIGINT, cosine DOUBLE
);
-- checkpoint: final (θT) | bio_end (θ_BIO, two-stage training's BIO checkpoint)
CREATE TABLE representation (
    model VARCHAR, strategy VARCHAR, seed BIGINT, measure VARCHAR, layer INTEGER,
    attribute VARCHAR, split VARCHAR, value DOUBLE, baseline DOUBLE, n BIGINT,
    checkpoint VARCHAR
);
CREATE TABLE token_dependence (
    model VARCHAR, strategy VARCHAR, seed BIGINT, person_id INTEGER, attribute VARCHAR,
    position INTEGER, token_class VARCHAR, token VARCHAR, logp DOUBLE, delta DOUBLE
);
-- the settings of the analysis (analysis.primary_definition: the one the ablation and the
-- headline use), from the rank settings stored in crosstrace_meta
CREATE VIEW analysis_settings AS
SELECT json_extract_string(value, '$.primary') AS primary_definition
FROM crosstrace_meta WHERE key = 'rank_settings';
