rule dump_trace:
    """One run's Δ (both tasks) as hive-partitioned Parquet: .../seed={seed}/task={bio,qa}/part-*.parquet.

    The output is the run's partition folder itself (a directory() output), not a sentinel
    file: Snakemake deletes it before a rerun, so no stale part file of an earlier run can
    survive into the DuckDB views, and the library swaps the finished folder into place
    atomically, so its presence means the dump is complete.
    """
    input:
        trace=run_file(TRACE_FILES["trajectory"]),
        model=res("runs/{model}/{strategy}/seed{seed}/final"),
    output:
        parts=directory(res("trace/model={model}/strategy={strategy}/seed={seed}")),
    log:
        res("logs/dump_trace/{model}/{strategy}/seed{seed}.log"),
    benchmark:
        res("benchmarks/dump_trace/{model}/{strategy}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    resources:
        runtime=job_runtime("dump_trace"),
        mem_mb=input_mem_mb("dump_trace", 0.1),
    params:
        trace_root=lambda wc, output: trace_root_of(output.parts),
        run=lambda wc: {
            "model": wc.model,
            "strategy": wc.strategy,
            "seed": int(wc.seed),
        },
        top_percent=config["trace"]["dump_top_percent"],
    script:
        "../workflow/scripts/dump.py"
