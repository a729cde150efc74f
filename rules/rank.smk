rule rank:
    """Top-k sets of one run: thresholds, per-tensor and per-cell counts (the one definition);
    and the different-people control's two pairings (at θT, and over training where the trace
    keeps the people halves), ranked the same way."""
    input:
        unpack(rank_traces),
        unpack(people_traces),
        model=res("runs/{model}/{strategy}/seed{seed}/final"),
    output:
        **ranking_files("{model}", "{strategy}", "{seed}"),
        people_control=run_file(PEOPLE_CONTROL_FILE),
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
        people_definitions=people_definitions(),
    script:
        "../workflow/scripts/rank.py"
