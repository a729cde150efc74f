rule rank:
    """Top-k sets of one run: thresholds, per-tensor and per-cell counts (the one definition)."""
    input:
        unpack(rank_traces),
        model=res("runs/{model}/{strategy}/seed{seed}/final"),
    output:
        **ranking_files("{model}", "{strategy}", "{seed}"),
    log:
        res("logs/rank/{model}/{strategy}/seed{seed}.log"),
    benchmark:
        res("benchmarks/rank/{model}/{strategy}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    resources:
        runtime=job_runtime("rank"),
        mem_mb=input_mem_mb("rank", 0.25),
    params:
        run=lambda wc: {
            "model": wc.model,
            "strategy": wc.strategy,
            "seed": int(wc.seed),
        },
        settings=rank_settings(),
    script:
        "../workflow/scripts/rank.py"
