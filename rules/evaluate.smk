rule evaluate:
    """Exact-match QA accuracy of θT on trained (id) and held-out (ood) people, and the
    first attribute token after its bio prefix (bio_id / bio_ood: memorisation)."""
    input:
        unpack(world_files),
        model=res("runs/{model}/{strategy}/seed{seed}/final"),
    output:
        predictions=run_file(PREDICTIONS_FILE),
    log:
        res("logs/evaluate/{model}/{strategy}/seed{seed}.log"),
    benchmark:
        res("benchmarks/evaluate/{model}/{strategy}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: job_threads("evaluate")
    resources:
        runtime=job_runtime("evaluate"),
        mem_mb=job_mem_mb("evaluate"),
        gpu=1,
    params:
        batch_size=config["evaluation"]["batch_size"],
        max_new_tokens=config["evaluation"]["max_new_tokens"],
        device=config["device"],
    script:
        "../workflow/scripts/evaluate.py"


rule evaluate_bio_end:
    """The same evaluation of θ_BIO, the end of two-stage training's BIO stage: how well its
    bios are memorised before any QA training (and its QA accuracy, near 0), and the
    name-token representation tables of θ_BIO (what the final-model analysis measures at θT).
    """
    input:
        unpack(world_files),
        model=res("runs/{model}/stage/seed{seed}/bio"),
    output:
        predictions=res(f"runs/{{model}}/stage/seed{{seed}}/{BIO_END_PREDICTIONS_FILE}"),
        representation=res(
            f"runs/{{model}}/stage/seed{{seed}}/{BIO_END_REPRESENTATION_FILE}"
        ),
    log:
        res("logs/evaluate_bio_end/{model}/seed{seed}.log"),
    benchmark:
        res("benchmarks/evaluate_bio_end/{model}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: job_threads("evaluate")
    resources:
        runtime=job_runtime("evaluate"),
        mem_mb=job_mem_mb("evaluate"),
        gpu=1,
    params:
        batch_size=config["evaluation"]["batch_size"],
        max_new_tokens=config["evaluation"]["max_new_tokens"],
        device=config["device"],
    script:
        "../workflow/scripts/evaluate.py"
