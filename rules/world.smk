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
