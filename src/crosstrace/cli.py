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

from crosstrace.errors import (
    EXIT_PREEMPTED,
    ConfigError,
    CrosstraceError,
    InputDataError,
    Preempted,
)
from crosstrace.runs import PHASES

DEFAULT_DB = "results/crosstrace.duckdb"
CONFIG_HELP = (
    "study config (YAML), e.g. config.yaml or config/ci.yaml: this one file over the defaults "
    "of src/crosstrace/schemas/config.schema.yaml (which config.yaml repeats); it is not "
    "merged over config.yaml"
)


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


def _database(path: str, command: str):
    """The crosstrace database at ``path``, opened read-only, or a one-line error that says
    where the path was looked for and how to give another."""
    import duckdb

    from crosstrace.database import connect

    if not Path(path).exists():
        where = "" if Path(path).is_absolute() else f" (relative to {Path.cwd()})"
        raise InputDataError(
            f"database not found: {path}{where}; run from the folder that holds results/, or "
            f"give the path: crosstrace {command} path/to/results/crosstrace.duckdb"
        )
    try:
        return connect(path)
    except duckdb.Error as exc:
        raise InputDataError(f"{path} is not a crosstrace database: {sql_error(exc)}") from None


def sql_error(exc: Exception) -> str:
    """DuckDB's message on one line (the caret lines under the query dropped)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not line.startswith("LINE ")]
    return " ".join(line for line in kept if set(line) != {"^"})


def _sql(args: argparse.Namespace, _cfg: dict[str, Any]) -> None:
    """Run ``-c`` statements, or read statements (ending with ';') from stdin, read-only."""
    import duckdb

    con = _database(args.db, "sql")

    def run(statement: str) -> None:
        try:
            rel = con.sql(statement)
            if rel is not None:
                rel.show(max_width=args.max_width, max_rows=args.max_rows)
        except duckdb.Error as exc:
            raise CrosstraceError(f"query failed: {sql_error(exc)}") from None

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
            except CrosstraceError as exc:  # at the prompt: report a bad query, carry on
                if not interactive:
                    raise
                print(f"Error: {exc}", file=sys.stderr)
            buffer = ""


def _check_config(args: argparse.Namespace, _cfg: dict[str, Any]) -> None:
    """Load the files in order, as ``snakemake --configfile`` merges them, and validate."""
    from crosstrace.config import load

    cfg = load(args.files)
    models = ", ".join(cfg["models"])
    print(f"config OK: {' + '.join(args.files)} (models {models}; seeds {cfg['seeds']})")


def _summary(args: argparse.Namespace, _cfg: dict[str, Any]) -> None:
    from crosstrace.headline import headline_markdown

    _database(args.db, "summary").close()
    sys.stdout.write(headline_markdown(args.db))


def parser() -> argparse.ArgumentParser:
    doc = (__doc__ or "").replace("``", "").split("\n\n")
    p = argparse.ArgumentParser(
        prog="crosstrace",
        description=doc[0],
        epilog=doc[1].replace("\n", " ").strip(),
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, func, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("--config", required=True, help=CONFIG_HELP)
        s.set_defaults(func=func)
        return s

    def database(s: argparse.ArgumentParser) -> None:
        where = f"the database (default: {DEFAULT_DB}, in the current folder)"
        s.add_argument("db", nargs="?", default=DEFAULT_DB, help=where)

    help = "query the results database (read-only) in SQL; it opens from any folder"
    s = sub.add_parser("sql", help=help, description=help)
    database(s)
    s.add_argument("-c", dest="command_text", metavar="SQL",
                   help="run this SQL and exit (without -c: statements ending with ';' from "
                   "a prompt or stdin)")  # fmt: skip
    s.add_argument("--max-rows", type=int, default=40, help="rows shown per result (default: 40)")
    s.add_argument("--max-width", type=int, default=160,
                   help="characters per output line (default: 160)")  # fmt: skip
    s.set_defaults(func=_sql, config=None)
    help = "print the headline tables (accuracy, overlap, ablation, …) as Markdown"
    s = sub.add_parser("summary", help=help, description=help)
    database(s)
    s.set_defaults(func=_summary, config=None)
    help = "check study config files, merged in order as snakemake --configfile merges them"
    s = sub.add_parser("check-config", help=help, description=help)
    s.add_argument("files", nargs="+", metavar="FILE",
                   help="YAML files, e.g. config.yaml config/ci.yaml")  # fmt: skip
    s.set_defaults(func=_check_config, config=None)
    s = cmd("synthesize", _synthesize, "write bio/qa/people Parquet of the config's world")
    s.add_argument("--out-dir", required=True, help="folder for bio/qa/people.parquet")
    s = cmd("build-base", _build_base, "write θ0 of one model of the config")
    s.add_argument("--model", required=True, help="a name under the config's models:")
    s.add_argument("--data-dir", required=True, help="folder with bio/qa/people.parquet")
    s.add_argument("--out", required=True, help="model folder to write")
    s.add_argument("--seed", type=int, default=0, help="initialisation seed (default: 0)")
    s = cmd("train", _train, "train one phase (resumes from its newest checkpoint)")
    s.add_argument("--phase", required=True, choices=PHASES,
                   help="bio: bios only; qa: QA only; mix: both in every step")  # fmt: skip
    s.add_argument("--init", required=True, help="model folder to start from")
    s.add_argument("--data-dir", required=True, help="folder with bio/qa/people.parquet")
    s.add_argument("--out", required=True, help="final model folder")
    s.add_argument("--trace-out", required=True, help="trace.safetensors to write (Δ per task)")
    s.add_argument("--log-out", required=True, help="train_log.parquet to write (per step)")
    s.add_argument("--seed", type=int, default=0, help="seed of data order and torch (default: 0)")
    s.add_argument("--device", help="auto | cpu | cuda (default: the config's device)")
    s.add_argument("--init-trace",
                   help="trace to continue (two-stage QA phase: the BIO stage's)")  # fmt: skip
    s.add_argument("--checkpoint-dir",
                   help="where resumable checkpoints go (default: next to --out)")  # fmt: skip
    s.add_argument("--max-steps", type=int,
                   help="stop after this many steps and write the outputs (the lr schedule "
                   "still spans the whole phase)")  # fmt: skip
    s = cmd("evaluate", _evaluate, "predict every QA row; write predictions Parquet")
    s.add_argument("--model-dir", required=True, help="model folder to evaluate")
    s.add_argument("--qa", required=True, help="qa.parquet")
    s.add_argument("--bio", help="bio.parquet: add the bio_id / bio_ood memorisation rows")
    s.add_argument("--out", required=True, help="predictions.parquet to write")
    s.add_argument("--device", help="auto | cpu | cuda (default: the config's device)")
    s = cmd("posthoc-trace", _posthoc_trace, "task gradients at a finished model (no trace kept)")
    s.add_argument("--model-dir", required=True, help="model folder (θT)")
    s.add_argument("--data-dir", required=True, help="folder with bio/qa/people.parquet")
    s.add_argument("--out", required=True, help="trace.safetensors to write")
    s.add_argument("--device", help="auto | cpu | cuda (default: the config's device)")
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
