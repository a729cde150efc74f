rule plots:
    """The five seaborn figures, each in every configured format, registered for the report."""
    input:
        **{t: res(f"tables/{t}.parquet") for t in TABLES},
    output:
        **{
            name: [
                report(
                    res(f"figures/{name}.{fmt}"),
                    caption=f"../workflow/report/{name}.rst",
                    category="Figures",
                    subcategory=name,
                    labels={"figure": name, "format": fmt},
                )
                for fmt in config["plots"]["formats"]
            ]
            for name in FIGURES
        },
    log:
        res("logs/plots.log"),
    benchmark:
        res("benchmarks/plots.tsv")
    conda:
        "../envs/crosstrace.yaml"
    resources:
        runtime=job_runtime("plots"),
        mem_mb=job_mem_mb("plots"),
    params:
        tables_dir=lambda wc, input: os.path.dirname(input.accuracy),
        out_dir=lambda wc, output: os.path.dirname(output.accuracy[0]),
        formats=config["plots"]["formats"],
        dpi=config["plots"]["dpi"],
        style=config["plots"]["style"],
    script:
        "../workflow/scripts/plots.py"
