rule aggregate:
    """DuckDB over the Parquet trace: accuracy, thresholds, shared counts, overlap,
    concentration and ablation tables, exported to results/tables/*.parquet."""
    input:
        traces=all_trace_dumps(),
        predictions=all_predictions(),
        ablations=all_ablations(),
    output:
        **{t: res(f"tables/{t}.parquet") for t in TABLES},
        database=res("crosstrace.duckdb"),
    log:
        res("logs/aggregate.log"),
    benchmark:
        res("benchmarks/aggregate.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: 2
    resources:
        runtime=lambda wc, attempt: 60 * attempt,
        mem_mb=4000,
    params:
        trace_root=lambda wc, input: trace_root_of(input.traces[0]),
        tables_dir=lambda wc, output: os.path.dirname(output.accuracy),
        runs=lambda wc, input: [
            (m, s, seed, path)
            for (m, s, seed), path in zip(all_runs(), input.predictions)
        ],
        k_percent=config["analysis"]["k_percent"],
        rank_modules=config["trace"]["rank_modules"],
        memory_limit=config["analysis"]["duckdb_memory_limit"],
    script:
        "../workflow/scripts/aggregate.py"
