"""Adapter: QA predictions of one run, or of θ_BIO with its representation tables
(rules/evaluate.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0], snakemake.threads)

from crosstrace.evaluate import evaluate_run  # noqa: E402

evaluate_run(
    snakemake.input.model,
    snakemake.input.qa,
    snakemake.output.predictions,
    bio_path=snakemake.input.bio,
    batch_size=snakemake.params.batch_size,
    max_new_tokens=snakemake.params.max_new_tokens,
    device=snakemake.params.device,
    representation_out=snakemake.output.get("representation"),
)
