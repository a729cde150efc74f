rule ablate:
    """Reset the shared top-k parameters to θ0 and re-evaluate, beside three controls."""
    input:
        model=res("runs/{model}/{strategy}/seed{seed}/final"),
        base=res("models/{model}/seed{seed}/base"),
        trace=res("runs/{model}/{strategy}/seed{seed}/trace.safetensors"),
        qa=DATA["qa"],
    output:
        ablation=res("runs/{model}/{strategy}/seed{seed}/ablation.parquet"),
    log:
        res("logs/ablate/{model}/{strategy}/seed{seed}.log"),
    benchmark:
        res("benchmarks/ablate/{model}/{strategy}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: 2
    resources:
        runtime=lambda wc, attempt: 120 * attempt,
        mem_mb=8000,
        gpu=1,
    params:
        run=lambda wc: {
            "model": wc.model,
            "strategy": wc.strategy,
            "seed": int(wc.seed),
        },
        k_percent=config["analysis"]["k_percent"],
        rank_modules=config["trace"]["rank_modules"],
        ablation_seed=config["analysis"]["ablation_seed"],
        batch_size=config["evaluation"]["batch_size"],
        max_new_tokens=config["evaluation"]["max_new_tokens"],
        device=config["device"],
    script:
        "../workflow/scripts/ablate.py"
