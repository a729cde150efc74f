rule aggregate:
    """DuckDB: the trace view, the ranking tables, overlap against the stratified null,
    concentration, ablation and summaries over seeds, exported to results/tables/*.parquet.
    """
    input:
        traces=all_trace_dumps(),
        predictions=all_predictions(),
        rankings=all_ranking_files(),
        ablations=all_ablations(),
        consistency=all_consistency_files(),
        runs=all_run_inputs(),
    output:
        **{t: res(f"tables/{t}.parquet") for t in TABLES},
        database=res("crosstrace.duckdb"),
    log:
        res("logs/aggregate.log"),
    benchmark:
        res("benchmarks/aggregate.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: job_threads("aggregate")
    resources:
        runtime=job_runtime("aggregate"),
        mem_mb=job_mem_mb("aggregate"),
    params:
        trace_root=lambda wc, input: trace_root_of(input.traces[0]),
        tables_dir=lambda wc, output: os.path.dirname(output.accuracy),
        runs=lambda wc: [run_files(*run) for run in all_runs()],
        settings=rank_settings(),
        memory_limit=config["analysis"]["duckdb_memory_limit"],
        primary_k=primary_k(config["analysis"]),
    script:
        "../workflow/scripts/database.py"
