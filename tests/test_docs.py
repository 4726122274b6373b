"""The docs (#33): a README that fits on a screen, every `gptimg` example in the README and the
docs site a command line the program accepts, and the emulator's table in step with its config.
(`make docs`, in the test command, builds the site with --strict: a broken link fails it.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import typer

try:  # typer >= 0.2x carries its own copy of click: its errors are its own classes
    from typer._click.exceptions import UsageError as _TyperUsageError
except ImportError:  # pragma: no cover - an older typer uses click itself
    _TyperUsageError = click.UsageError  # type: ignore[misc,assignment]
USAGE_ERRORS = (click.UsageError, _TyperUsageError)

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Placeholders the docs use where a user puts their own value.
_FILLED = {"PROMPTS_FILE": "prompts.jsonl", "PROMPT": "a kite", "IMAGE": "in.png"}


def _examples() -> list[tuple[str, str]]:
    """(page, command line) of every `gptimg …` line in a bash code block."""
    found = []
    for page in PAGES:
        blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", page.read_text(), flags=re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip().rstrip("&").strip()
                if re.match(r"^(\.venv/bin/)?gptimg\s", line):
                    found.append((page.name, line))
    return found


EXAMPLES = _examples()


def test_the_readme_fits_on_a_screen_and_points_to_the_docs() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in ("docs/usage.md", "docs/cli.md", "docs/emulator.md", "docs/deployments.md"):
        assert f"]({page})" in text and (ROOT / page).is_file(), page


def test_there_are_examples_to_check() -> None:
    pages = {page for page, _ in EXAMPLES}
    assert len(EXAMPLES) >= 8 and {"README.md", "emulator.md", "deployments.md"} <= pages, EXAMPLES


@pytest.mark.parametrize(("page", "line"), EXAMPLES, ids=[f"{p}:{c[:50]}" for p, c in EXAMPLES])
def test_every_gptimg_example_is_a_command_line_the_program_accepts(page: str, line: str) -> None:
    """Parsed by the real `gptimg` parser (its commands, options and their values), nothing
    run: a renamed option or a typo in the docs fails here. `$(…)` and `$VAR` stand for the
    user's own values."""
    from gptimg_flows.cli import app

    words = shlex.split(re.sub(r"\$\w+|\$\([^)]*\)", "x", line), comments=True)[1:]
    words = [_FILLED.get(w, w) for w in words]
    command = typer.main.get_command(app)
    try:
        _parse(command, "gptimg", words, None)
    except USAGE_ERRORS as exc:
        raise AssertionError(f"{page}: `{line}` is not accepted: {exc.format_message()}") from None


def _parse(command: Any, name: str, words: list[str], parent: Any) -> None:
    """Parse `words` as the program would, down to the command they name; run nothing."""
    ctx = command.make_context(name, list(words), parent=parent)
    if callable(getattr(command, "resolve_command", None)):  # a group of commands
        head = getattr(ctx, "_protected_args", None)
        rest = [*(head if head is not None else ctx.protected_args), *ctx.args]
        sub_name, sub, args = command.resolve_command(ctx, rest)
        assert sub is not None and sub_name is not None, f"no command in {words}"
        _parse(sub, sub_name, args, ctx)


def test_the_emulator_page_lists_every_config_field_and_fault() -> None:
    from gptimg_flows.testing.config import FAULT_KINDS, EmulatorConfig

    text = (ROOT / "docs" / "emulator.md").read_text()
    missing = [f for f in EmulatorConfig.model_fields if f"| `{f}` |" not in text]
    assert not missing, f"docs/emulator.md misses config fields {missing}"
    assert all(f"`{kind}`" in text for kind in FAULT_KINDS)


@pytest.mark.parametrize(
    "line",
    [
        "gptimg generate x --sise 10",
        "gptimg generat x",
        "gptimg blocks creat",
        "gptimg spend --since",
    ],
)
def test_the_check_refuses_what_the_program_refuses(line: str) -> None:
    with pytest.raises(AssertionError, match="is not accepted"):
        test_every_gptimg_example_is_a_command_line_the_program_accepts("x.md", line)
