"""The README's provider table is generated from the adapters: it must not drift."""

from __future__ import annotations

from pathlib import Path

from gptimg_flows.providers import capability_notes, capability_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text().split("```")[1]
    assert "make demo" in head and "make test" in head


def test_readme_capability_table_matches_the_adapters() -> None:
    docs = README.parent / "docs"
    for page in (README, docs / "providers.md"):
        text = page.read_text()
        assert capability_table() in text, f"run `gptimg providers`, paste the table in {page}"
    assert capability_notes() in (docs / "provider-notes.md").read_text()
