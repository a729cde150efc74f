rule base_model:
    """θ0: a tiny model with its word-level tokenizer, or a saved copy of a pretrained one."""
    input:
        **DATA,
    output:
        model=directory(res("models/{model}/base")),
    log:
        res("logs/base_model/{model}.log"),
    benchmark:
        res("benchmarks/base_model/{model}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    resources:
        runtime=30,
        mem_mb=4000,
    params:
        model_cfg=model_config,
        seed=config["world"]["seed"],
        single_token_names=config["world"]["single_token_names"],
        bos=lambda wc: config["models"][wc.model]["bos"],
    script:
        "../workflow/scripts/models.py"
