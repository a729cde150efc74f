-- Tables filled by crosstrace.database.build_database (one statement per ';').
CREATE TABLE crosstrace_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE k_values (k_percent DOUBLE PRIMARY KEY);
CREATE TABLE rank_modules (module VARCHAR PRIMARY KEY);
-- one row per dumped (run, task): how it was dumped (top_percent null = every element)
CREATE TABLE trace_runs (
    model VARCHAR, strategy VARCHAR, seed BIGINT, task VARCHAR,
    arch VARCHAR, top_percent DOUBLE, dump_threshold FLOAT, n_files BIGINT
);
-- element counts of every (layer, module, head) cell of the full model, from the dump metadata
CREATE TABLE trace_cells (
    model VARCHAR, strategy VARCHAR, seed BIGINT, task VARCHAR,
    layer SMALLINT, module VARCHAR, head SMALLINT, n_params BIGINT
);
CREATE TABLE thresholds (
    model VARCHAR, strategy VARCHAR, seed BIGINT, task VARCHAR, k_percent DOUBLE,
    n_ranked BIGINT, k_rows BIGINT, threshold FLOAT
);
CREATE TEMP TABLE threshold_targets (
    model VARCHAR, strategy VARCHAR, seed BIGINT, task VARCHAR, k_percent DOUBLE,
    n_ranked BIGINT, k_rows BIGINT, r BIGINT, lo FLOAT, hi FLOAT
);
-- top-k members per (run, task, k); lk / hk are layer / head with -1 for null
CREATE TEMP TABLE topk (
    model VARCHAR, strategy VARCHAR, seed BIGINT, task VARCHAR, k_percent DOUBLE,
    param VARCHAR, "row" INTEGER, col INTEGER, lk SMALLINT, module VARCHAR, hk SMALLINT
);
CREATE TABLE accuracy (
    model VARCHAR, strategy VARCHAR, seed BIGINT, split VARCHAR, attribute VARCHAR,
    n BIGINT, correct BIGINT, accuracy DOUBLE, first_token_correct BIGINT,
    first_token_accuracy DOUBLE
);
CREATE TABLE ablation_raw (
    model VARCHAR, strategy VARCHAR, seed BIGINT, k_percent DOUBLE, condition VARCHAR,
    n_reset BIGINT, split VARCHAR, accuracy DOUBLE
);
