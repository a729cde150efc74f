rule consistency:
    """θT of one run: gradient consistency on the shared / random / all sets, name-token
    representation consistency and probe transfer, and which prompt tokens the answer needs.
    """
    input:
        unpack(rank_traces),
        unpack(world_files),
        model=res("runs/{model}/{strategy}/seed{seed}/final"),
        ranking=run_file(RANKING_FILES["ranking"]),
    output:
        **{what: run_file(name) for what, name in FINAL_MODEL_FILES.items()},
    log:
        res("logs/consistency/{model}/{strategy}/seed{seed}.log"),
    benchmark:
        res("benchmarks/consistency/{model}/{strategy}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: job_threads("consistency")
    resources:
        runtime=job_runtime("consistency"),
        mem_mb=input_mem_mb("consistency", 0.5),
        gpu=1,
    params:
        run=lambda wc: {
            "model": wc.model,
            "strategy": wc.strategy,
            "seed": int(wc.seed),
        },
        settings=rank_settings(),
        probe_people=config["analysis"]["probe_people"],
        probe_bio_values=config["analysis"]["probe_bio_values"],
        ablation_seed=config["analysis"]["ablation_seed"],
        device=config["device"],
    script:
        "../workflow/scripts/final_model.py"
