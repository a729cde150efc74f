rule synthesize:
    output:
        bio=DATA["bio"],
        qa=DATA["qa"],
        people=DATA["people"],
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
        "../workflow/scripts/synthesize.py"
