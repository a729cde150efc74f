rule synthesize:
    output:
        bio=DATA["bio"],
        qa=DATA["qa"],
        people=DATA["people"],
        # the same world as a Hugging Face DatasetDict (crosstrace.world.load_world)
        dataset=directory(res("data/world")),
    log:
        res("logs/synthesize.log"),
    benchmark:
        res("benchmarks/synthesize.tsv")
    conda:
        "../envs/crosstrace.yaml"
    resources:
        runtime=job_runtime("synthesize"),
        mem_mb=job_mem_mb("synthesize"),
    params:
        world=config["world"],
    script:
        "../workflow/scripts/world.py"


rule synthesize_seed:
    """The world of a seed > 0 (world.vary_with_seed): the same settings, world seed + seed."""
    output:
        bio=res("data/seed{seed}/bio.parquet"),
        qa=res("data/seed{seed}/qa.parquet"),
        people=res("data/seed{seed}/people.parquet"),
        dataset=directory(res("data/seed{seed}/world")),
    log:
        res("logs/synthesize/seed{seed}.log"),
    benchmark:
        res("benchmarks/synthesize/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    resources:
        runtime=job_runtime("synthesize"),
        mem_mb=job_mem_mb("synthesize"),
    params:
        world=world_params,
    script:
        "../workflow/scripts/world.py"
