rule endpoint_trace:
    """The endpoint definition of Δ: each task's mean-loss gradient at θT (no trajectory); and
    the gradients of the different-people control: BIO of half the trained people, and the QA
    of the same half and of the other half (ranked by the rank rule)."""
    input:
        unpack(world_files),
        model=res("runs/{model}/{strategy}/seed{seed}/final"),
    output:
        trace=run_file(TRACE_FILES["endpoint"]),
        people=run_file(PEOPLE_TRACE_FILES["endpoint"]),
    log:
        res("logs/endpoint_trace/{model}/{strategy}/seed{seed}.log"),
    benchmark:
        res("benchmarks/endpoint_trace/{model}/{strategy}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: job_threads("endpoint_trace")
    resources:
        runtime=job_runtime("endpoint_trace"),
        mem_mb=job_mem_mb("endpoint_trace"),
        gpu=1,
    params:
        run=lambda wc: {
            "model": wc.model,
            "strategy": wc.strategy,
            "seed": int(wc.seed),
        },
        batch_size=config["training"]["batch_size"],
        device=config["device"],
    script:
        "../workflow/scripts/posthoc.py"
