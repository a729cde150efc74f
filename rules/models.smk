rule base_model:
    """θ0 of one model and seed: a tiny model with its word-level tokenizer (random init from
    the seed), or a saved copy of a pretrained one."""
    input:
        unpack(world_files),
    output:
        model=directory(res("models/{model}/seed{seed}/base")),
    log:
        res("logs/base_model/{model}/seed{seed}.log"),
    benchmark:
        res("benchmarks/base_model/{model}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    resources:
        runtime=job_runtime("base_model"),
        mem_mb=job_mem_mb("base_model"),
    params:
        model_cfg=model_config,
        seed=lambda wc: int(wc.seed),  # init differs by seed; the world is world.seed's
        single_token_names=config["world"]["single_token_names"],
        bos=lambda wc: config["models"][wc.model]["bos"],
    script:
        "../workflow/scripts/models.py"
