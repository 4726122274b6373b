"""Every `gptimg` example in the README and the docs site runs as a newcomer would type it, in
the page's order (#33): on a real `prefect server`, in a fresh folder, with the emulator's keys
and base URLs in the environment as its `--print-env` gives them. An example that needs what a
test machine cannot have (a seller's real key, a bucket, a Slack webhook) says so on its own
line, `# needs: …`, and is the only kind left out. (tests/test_docs.py parses every example
with the program's own parser, the marked ones too.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gptimg_flows.testing.emulator import credentials_env

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = re.compile(r"#\s*needs:\s*(.+)$")
GPTIMG = re.compile(r"^(\.venv/bin/)?gptimg(?=\s)")

pytestmark = pytest.mark.slow


def _examples(page: Path) -> list[tuple[str, str | None]]:
    """(command line, what it needs or None) of each `gptimg …` line in a bash block."""
    found = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not GPTIMG.match(line):
                continue
            needs = NEEDS.search(line)
            command = line.split("  #")[0].strip().rstrip("&").strip()
            found.append((command, needs.group(1).strip() if needs else None))
    return found


PAGES_WITH_EXAMPLES = [p for p in PAGES if _examples(p)]


def test_most_examples_run_and_the_rest_say_why() -> None:
    every = [e for p in PAGES_WITH_EXAMPLES for e in _examples(p)]
    needing = [e for e in every if e[1] is not None]
    assert len(every) >= 10 and len(needing) <= len(every) // 3, needing


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=[p.name for p in PAGES_WITH_EXAMPLES])
def test_every_example_on_the_page_runs(
    page: Path, cli_server: dict[str, str], emulator_process: Any, tmp_path: Path
) -> None:
    env = dict(cli_server)
    for line in credentials_env(emulator_process.url).splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    env["COLUMNS"] = "120"
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a kite"}\n')
    ran = 0
    for command, needs in _examples(page):
        if needs is not None:
            continue
        line = GPTIMG.sub(f"{sys.executable} -m gptimg_flows.cli", command)
        done = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, (
            f"{page.name}: `{command}` exited {done.returncode}:\n{done.stdout[-1500:]}\n"
            f"{done.stderr[-2500:]}"
        )
        ran += 1
    assert ran or all(needs for _, needs in _examples(page))
