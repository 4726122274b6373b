"""The README's provider table is generated from the adapters: it must not drift."""

from __future__ import annotations

from pathlib import Path

from gptimg_flows.providers import capability_notes, capability_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text().split("```")[1]
    assert "make demo" in head and "make test" in head


def test_readme_capability_table_matches_the_adapters() -> None:
    text = README.read_text()
    assert capability_table() in text, "run `gptimg providers` and paste the table into README"
    assert capability_notes() in text
