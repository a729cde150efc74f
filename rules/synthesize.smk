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
        runtime=15,
        mem_mb=2000,
    params:
        world=config["world"],
    script:
        "../workflow/scripts/synthesize.py"
