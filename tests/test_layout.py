"""The folders are the architecture: each package imports only what its layer may, and the
packages without Prefect stay without it (read from the source, so a new import that breaks a
rule fails here, not in a user's worker)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gptimg_flows"

#: Units (a top-level module or a package) from the bottom up: a unit imports only units of
#: its own rank or lower. flows.py and the flow packages are the top; plain values the bottom.
RANKS: dict[str, int] = {
    "errors": 0, "sizes": 0, "models": 0, "results": 0, "rows": 0, "textcheck": 0,
    "media": 1,
    "spend": 2, "providers": 2, "archive": 2,
    "blocks": 3, "testing": 3,
    "engine": 4,
    "tasks": 5, "estimates": 5,
    "review": 6,
    "flows": 8,
    "distributed": 7,
    "cli": 9,
    "__init__": 10,
}  # fmt: skip
#: Units that never import Prefect.
NO_PREFECT = {"errors", "sizes", "models", "results", "rows", "media", "spend", "providers",
              "archive", "textcheck", "engine.rate_limiter", "engine.records",
              "engine.job_record"}  # fmt: skip
#: Units where Prefect's task and flow machinery may be used.
TASK_MACHINERY = {"engine", "tasks", "flows", "review", "distributed"}


def _imports() -> list[tuple[str, str, str]]:
    """(module, its unit, what it imports) for every import in the package."""
    out = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(parts)
        unit = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.extend((module, unit, f"{node.module}.{a.name}") for a in node.names)
            elif isinstance(node, ast.Import):
                out.extend((module, unit, a.name) for a in node.names)
    return out


IMPORTS = _imports()


def test_every_unit_has_a_rank() -> None:
    units = {unit for _, unit, _ in IMPORTS}
    assert units <= set(RANKS), f"place these in RANKS: {sorted(units - set(RANKS))}"


def test_no_unit_imports_a_layer_above_it() -> None:
    upward = []
    for module, unit, name in IMPORTS:
        if not name.startswith("gptimg_flows."):
            continue
        target = name.split(".")[1]
        if target in RANKS and RANKS[target] > RANKS[unit]:
            upward.append(f"{module} imports {name}")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("unit", sorted(NO_PREFECT))
def test_these_know_no_prefect(unit: str) -> None:
    found = [
        f"{module} imports {name}"
        for module, _, name in IMPORTS
        if (module == unit or module.startswith(unit + ".")) and name.split(".")[0] == "prefect"
    ]
    assert not found, "\n".join(found)


def test_task_and_flow_machinery_only_where_runs_are_made() -> None:
    machinery = ("prefect.task", "prefect.flow", "prefect.tasks.", "prefect.flows.")
    found = [
        f"{module} imports {name}"
        for module, unit, name in IMPORTS
        if unit not in TASK_MACHINERY and name.startswith(machinery)
    ]
    assert not found, "\n".join(found)
