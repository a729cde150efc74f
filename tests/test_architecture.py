"""The package's layers: every module imports only from its own layer or the ones below, the
imports form no circle, and no function grows past one screenful and a half."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "crosstrace"

# Bottom to top. A module may import from its own layer (without a circle) and from below.
LAYERS = {
    "ground": [
        "errors", "choices", "atomic", "outputs", "runs", "config", "devices", "templates",
        "param_map", "joblog", "tracefile", "world", "tokenizer", "cluster",
    ],
    "data and parallelism": [
        "batches", "distributed", "checkpoint", "preemption", "optim", "training_config",
    ],
    "model, loss and the step": ["models", "loss", "trace", "scoring", "step", "parallel"],
    "analysis": ["probes", "consistency", "representation", "rank", "units"],
    "stages": [
        "train", "curve", "contrasts", "posthoc", "people_control", "evaluate", "dump", "ablate",
        "final_model",
        "database", "headline", "plots", "report",
    ],
    "entry points": ["worker", "cli"],
}  # fmt: skip
LAYER_OF = {module: i for i, modules in enumerate(LAYERS.values()) for module in modules}
MAX_FUNCTION_LINES = 100


def modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


def imports(path: Path) -> set[str]:
    """The crosstrace modules ``path`` imports, at the top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "crosstrace":
                out.update(parts[1:2] or [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("crosstrace."))
    return out & set(modules()) - {path.stem}


def test_every_module_has_exactly_one_layer() -> None:
    listed = [m for layer in LAYERS.values() for m in layer]
    assert len(listed) == len(set(listed)), "a module is listed in two layers"
    assert sorted(listed) == sorted(modules()), "LAYERS must list every module of the package"


def test_imports_go_down_the_layers() -> None:
    upward = [
        f"{m} ({layer_name(m)}) imports {d} ({layer_name(d)})"
        for m, path in modules().items()
        for d in sorted(imports(path))
        if LAYER_OF[d] > LAYER_OF[m]
    ]
    assert not upward, "\n".join(upward)


def test_imports_form_no_circle() -> None:
    graph = {m: imports(p) for m, p in modules().items()}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == "done":
            return
        if state.get(m) == "open":
            cycle = [*path[path.index(m) :], m]
            pytest.fail("import circle: " + " -> ".join(cycle))
        state[m] = "open"
        for d in sorted(graph[m]):
            visit(d, [*path, m])
        state[m] = "done"

    for m in graph:
        visit(m, [])


def layer_name(module: str) -> str:
    return list(LAYERS)[LAYER_OF[module]]


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checks above read real import statements, lazy ones inside functions included."""
    source = tmp_path / "probe.py"
    source.write_text(
        "def f():\n    from crosstrace.train import train_run\n    import crosstrace.cli\n"
    )
    assert imports(source) == {"train", "cli"}


def test_no_function_is_longer_than_a_screen_and_a_half() -> None:
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_parsing_the_workflow_does_not_import_torch() -> None:
    """Snakemake parses the Snakefile for every command and again inside every cluster job;
    the crosstrace modules it imports stay torch-free (importing torch costs seconds)."""
    import re
    import subprocess
    import sys

    workflow = PACKAGE.parents[1]
    sources = [workflow / "Snakefile", *sorted((workflow / "rules").glob("*.smk"))]
    names = sorted(
        {
            m
            for p in sources
            for m in re.findall(r"^\s*from (crosstrace\.\w+) import", p.read_text(), re.M)
        }
    )
    assert "crosstrace.training_config" in names and "crosstrace.config" in names
    code = f"import sys; import {', '.join(names)}; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False", f"importing {names} imports torch"
