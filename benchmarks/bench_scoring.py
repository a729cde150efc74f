"""How the evaluation pass size (``evaluation.batch_size``) sets the speed of scoring.

    python benchmarks/bench_scoring.py [--model llama_tiny] [--rounds 5] [--sizes 1024,256,64,32]

On the default world and the tiny model's θ0 (the cost of a pass does not depend on the
weights), one thread, interleaved rounds, per pass size:

- teacher-forced QA exact match over the ablation's question sample
  (``analysis.ablation_questions`` per split; ``crosstrace.scoring``), the pass the ablation
  repeats for every condition: ms per sample and the speed against the first size;
- greedy generation over 2,000 QA pairs (``crosstrace.evaluate.predict``, the evaluate job).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from crosstrace.ablate import question_sample
from crosstrace.evaluate import predict
from crosstrace.models import bos_id, build_base, load_model
from crosstrace.scoring import qa_exact_match, qa_examples
from crosstrace.world import read_qa, synthesize_world

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama_tiny")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="1024,256,64,32", help="pass sizes, the first the base")
    ap.add_argument("--workdir", type=Path, default=None, help="world and θ0 (default: temp)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    if not (workdir / "base").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        synthesize_world(cfg["world"], *(workdir / f"{n}.parquet" for n in ("bio", "qa", "people")))
        m = cfg["models"][args.model]
        build_base(m, workdir, workdir / "base", seed=0, bos=m.get("bos", True))
    torch.set_num_threads(1)
    model, tok = load_model(workdir / "base", "cpu")
    qa = read_qa(workdir / "qa.parquet")
    per_split = cfg["analysis"]["ablation_questions"]
    sample = qa.iloc[question_sample(qa, per_split, 0)].reset_index(drop=True)
    examples = qa_examples(sample, tok, bos_id(model, tok))
    generated = qa.iloc[:2000]
    jobs = {
        "scoring": lambda size: qa_exact_match(model, examples, batch_size=size),
        "generation": lambda size: predict(model, tok, generated, batch_size=size),
    }
    times: dict[tuple[str, int], list[float]] = {(j, s): [] for j in jobs for s in sizes}
    for job, size in times:  # warm-up
        jobs[job](size)
    for _ in range(args.rounds):
        for job, size in times:
            t0 = time.perf_counter()
            jobs[job](size)
            times[job, size].append(time.perf_counter() - t0)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"model={args.model} torch={torch.__version__} capability={capability} 1 thread, "
          f"median of {args.rounds} rounds")  # fmt: skip
    what = {"scoring": f"{len(examples)} QA teacher-forced (the ablation's sample)",
            "generation": f"{len(generated)} QA greedy, max_new_tokens 12"}  # fmt: skip
    for job in jobs:
        print(f"\n{job}: {what[job]}")
        base = statistics.median(times[job, sizes[0]])
        for size in sizes:
            med = statistics.median(times[job, size])
            print(f"  pass size {size:5d}: {med * 1000:8.1f} ms  {base / med:4.2f}x")


if __name__ == "__main__":
    main()
