# Training jobs ask for training.nproc GPUs (crosstrace.distributed starts one process per GPU
# inside the job) and none with `device: cpu`, where the processes share the job's CPUs.
#
# Training checkpoints live beside the outputs (`<out_dir>.checkpoints/`), never inside them:
# Snakemake deletes a job's declared outputs before it reruns, and a requeued or retried job
# must find its checkpoints to resume.


rule train_bio:
    """The BIO stage of two-stage training; shared by every `stage` run of a model and seed."""
    input:
        unpack(world_files),
        init=res("models/{model}/seed{seed}/base"),
    output:
        # An HF model folder that also holds the trace files, train_log.parquet, the
        # consistency records and the training curve.
        model=directory(res("runs/{model}/stage/seed{seed}/bio")),
    log:
        res("logs/train_bio/{model}/seed{seed}.log"),
    benchmark:
        res("benchmarks/train_bio/{model}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: job_threads("train_bio")
    resources:
        runtime=job_runtime("train_bio"),
        mem_mb=job_mem_mb("train_bio"),
        gpu=training_gpus(),
    params:
        phase="bio",
        training=training_params("bio"),
        trace=trace_params(),
        device=config["device"],
        init_trace=None,
        trace_out=lambda wc, output: os.path.join(
            output.model, TRACE_FILES["trajectory"]
        ),
        log_out=lambda wc, output: os.path.join(output.model, TRAIN_LOG_FILE),
        consistency=consistency_params(),
        consistency_out=lambda wc, output: os.path.join(
            output.model, TRAINING_CONSISTENCY_FILE
        ),
        init_consistency=None,
        curve=curve_params(),
        curve_out=lambda wc, output: os.path.join(output.model, TRAINING_CURVE_FILE),
        init_curve=None,
    script:
        "../workflow/scripts/train.py"


rule train:
    """stage: QA on the BIO checkpoint, continuing its trace; mix: BIO and QA together from θ0."""
    input:
        unpack(world_files),
        init=train_init,
    output:
        **kind_trace_outputs(),
        model=directory(res("runs/{model}/{strategy}/seed{seed}/final")),
        trace=run_file(TRACE_FILES["trajectory"]),
        train_log=run_file(TRAIN_LOG_FILE),
        consistency=run_file(TRAINING_CONSISTENCY_FILE),
        curve=run_file(TRAINING_CURVE_FILE),
    log:
        res("logs/train/{model}/{strategy}/seed{seed}.log"),
    benchmark:
        res("benchmarks/train/{model}/{strategy}/seed{seed}.tsv")
    conda:
        "../envs/crosstrace.yaml"
    threads: job_threads("train")
    resources:
        runtime=job_runtime("train"),
        mem_mb=job_mem_mb("train"),
        gpu=training_gpus(),
    params:
        phase=phase_of,
        training=lambda wc: training_params(phase_of(wc)),
        trace=trace_params(),
        device=config["device"],
        init_trace=train_init_trace,
        trace_out=lambda wc, output: output.trace,
        log_out=lambda wc, output: output.train_log,
        consistency=consistency_params(),
        consistency_out=lambda wc, output: output.consistency,
        init_consistency=train_init_consistency,
        curve=curve_params(),
        curve_out=lambda wc, output: output.curve,
        init_curve=train_init_curve,
    script:
        "../workflow/scripts/train.py"
