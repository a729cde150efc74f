rule ablate:
    """Reset the shared top-k parameters to θ0 and re-evaluate, beside matched controls; the
    same for whole heads and neurons ranked by their shared count (the unit ablation).
    """
    input:
        unpack(world_files),
        unpack(rank_traces),
        unpack(update_trace_input),
        model=res("runs/{model}/{strategy}/seed{seed}/final"),
        base=res("models/{model}/seed{seed}/base"),
        ranking=run_file(RANKING_FILES["ranking"]),
    output:
        ablation=run_file(ABLATION_FILE),
        units=run_file(UNIT_ABLATION_FILE),
    log:
        res("logs/ablate/{model}/{strategy}/seed{seed}.log"),
    benchmark:
        res("benchmarks/ablate/{model}/{strategy}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: job_threads("ablate")
    resources:
        runtime=job_runtime("ablate"),
        mem_mb=input_mem_mb("ablate", 0.6),
        gpu=1,
    params:
        run=lambda wc: {
            "model": wc.model,
            "strategy": wc.strategy,
            "seed": int(wc.seed),
        },
        settings=rank_settings(),
        draws=config["analysis"]["ablation_draws"],
        ablation_seed=config["analysis"]["ablation_seed"],
        questions_per_split=config["analysis"]["ablation_questions"],
        batch_size=config["evaluation"]["batch_size"],
        device=config["device"],
        unit_counts=config["analysis"]["unit_counts"],
        unit_k=primary_k(config["analysis"]),
    script:
        "../workflow/scripts/ablate.py"
