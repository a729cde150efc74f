"""``crosstrace``: the library's steps from a shell, outside Snakemake (one subcommand each).

Exit codes: 0 done, 2 a user-facing problem (``crosstrace: error: …`` on stderr),
75 (EX_TEMPFAIL) preempted after writing a checkpoint: rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from crosstrace.errors import EXIT_PREEMPTED, ConfigError, CrosstraceError, Preempted
from crosstrace.runs import PHASES


def load_config(path: str) -> dict[str, Any]:
    """The validated config, defaults filled: the same loader as the workflow."""
    from crosstrace.config import load

    return load([path])


def _synthesize(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from crosstrace.world import synthesize_world

    out = Path(args.out_dir)
    synthesize_world(cfg["world"], out / "bio.parquet", out / "qa.parquet", out / "people.parquet")


def _build_base(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from crosstrace.models import build_base

    models = cfg["models"]
    if args.model not in models:
        raise ConfigError(f"model {args.model!r} is not in the config's models: {sorted(models)}")
    build_base(
        models[args.model],
        args.data_dir,
        args.out,
        seed=args.seed,
        single_token_names=cfg["world"]["single_token_names"],
        bos=models[args.model]["bos"],
    )


def _train(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from crosstrace.train import train_run
    from crosstrace.training_config import trace_section

    result = train_run(
        args.init,
        args.out,
        args.trace_out,
        args.log_out,
        phase=args.phase,
        data_dir=args.data_dir,
        training=cfg["training"],
        trace=trace_section(cfg["trace"]),
        seed=args.seed,
        device=args.device or cfg["device"],
        init_trace=args.init_trace,
        checkpoint_dir=args.checkpoint_dir,
        progress=False,
        max_steps=args.max_steps,
    )
    logging.getLogger("crosstrace").info("train done: %s", result)


def _evaluate(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from crosstrace.evaluate import evaluate_run

    ev = cfg["evaluation"]
    acc = evaluate_run(
        args.model_dir,
        args.qa,
        args.out,
        bio_path=args.bio,
        batch_size=ev["batch_size"],
        max_new_tokens=ev["max_new_tokens"],
        device=args.device or cfg["device"],
    )
    print(" ".join(f"{split}={value:.4f}" for split, value in acc.items()))


def _posthoc_trace(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from crosstrace.posthoc import posthoc_trace

    posthoc_trace(
        args.model_dir,
        args.data_dir,
        args.out,
        batch_size=cfg["training"]["batch_size"],
        device=args.device or cfg["device"],
        progress=False,
    )


def _sql(args: argparse.Namespace, _cfg: dict[str, Any]) -> None:
    """Run ``-c`` statements, or read statements (ending with ';') from stdin, read-only."""
    from crosstrace.database import connect

    con = connect(args.db)

    def run(statement: str) -> None:
        rel = con.sql(statement)
        if rel is not None:
            rel.show(max_width=args.max_width, max_rows=args.max_rows)

    if args.command_text:
        run(args.command_text)
        return
    interactive = sys.stdin.isatty()
    buffer = ""
    while True:
        try:
            line = input("D " if not buffer else "· ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and line == "":
            break
        buffer += line + "\n"
        if buffer.strip().endswith(";"):
            try:
                run(buffer)
            except Exception as exc:  # a bad query: report it and carry on
                print(f"Error: {exc}", file=sys.stderr)
                if not interactive:
                    raise CrosstraceError(f"query failed: {exc}") from exc
            buffer = ""


def _summary(args: argparse.Namespace, _cfg: dict[str, Any]) -> None:
    from crosstrace.headline import headline_markdown

    sys.stdout.write(headline_markdown(args.db))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crosstrace", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, func, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("--config", required=True, help="YAML config (same keys as config.yaml)")
        s.set_defaults(func=func)
        return s

    s = sub.add_parser(
        "sql", help="query results/crosstrace.duckdb (read-only) from any folder, in SQL"
    )
    s.add_argument("db", nargs="?", default="results/crosstrace.duckdb")
    s.add_argument("-c", dest="command_text", help="run this SQL and exit")
    s.add_argument("--max-rows", type=int, default=40)
    s.add_argument("--max-width", type=int, default=160)
    s.set_defaults(func=_sql, config=None)
    s = sub.add_parser(
        "summary", help="print the headline tables (accuracy, overlap, ablation, …) as Markdown"
    )
    s.add_argument("db", nargs="?", default="results/crosstrace.duckdb")
    s.set_defaults(func=_summary, config=None)
    s = cmd("synthesize", _synthesize, "write bio/qa/people Parquet of the config's world")
    s.add_argument("--out-dir", required=True)
    s = cmd("build-base", _build_base, "write θ0 of one model of the config")
    s.add_argument("--model", required=True)
    s.add_argument("--data-dir", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s = cmd("train", _train, "train one phase (resumes from its newest checkpoint)")
    s.add_argument("--phase", required=True, choices=PHASES)
    s.add_argument("--init", required=True, help="model folder to start from")
    s.add_argument("--data-dir", required=True)
    s.add_argument("--out", required=True, help="final model folder")
    s.add_argument("--trace-out", required=True)
    s.add_argument("--log-out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", help="auto | cpu | cuda (default: the config's device)")
    s.add_argument("--init-trace")
    s.add_argument("--checkpoint-dir")
    s.add_argument("--max-steps", type=int)
    s = cmd("evaluate", _evaluate, "predict every QA row; write predictions Parquet")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--qa", required=True)
    s.add_argument("--bio", help="bio.parquet: add the bio_id / bio_ood memorisation rows")
    s.add_argument("--out", required=True)
    s.add_argument("--device")
    s = cmd("posthoc-trace", _posthoc_trace, "task gradients at a finished model (no trace kept)")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--data-dir", required=True)
    s.add_argument("--out", required=True, help="trace.safetensors to write")
    s.add_argument("--device")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        args.func(args, load_config(args.config) if args.config else {})
    except Preempted as exc:
        print(f"crosstrace: preempted: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except CrosstraceError as exc:
        print(f"crosstrace: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
