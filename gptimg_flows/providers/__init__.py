"""Provider adapters: one module per hosted API, none of them knows Prefect."""

from __future__ import annotations

from .base import Capabilities, PreparedInputs, Provider
from .gptimage2ai import GptImage2AIProvider
from .offline import LenientOfflineProvider, OfflineProvider
from .openai import OpenAIProvider
from .runware import RunwareProvider
from .scenario import ScenarioProvider
from .skillsvideo import SkillsVideoProvider

#: Our provider names → adapter classes.
PROVIDERS: dict[str, type[Provider]] = {
    cls.name: cls
    for cls in (
        OpenAIProvider,
        ScenarioProvider,
        RunwareProvider,
        SkillsVideoProvider,
        GptImage2AIProvider,
        OfflineProvider,
        LenientOfflineProvider,
    )
}


def capability_table() -> str:
    """The markdown table the README and `gptimg providers` show, built from the adapters."""
    rows = [(name, cls.capabilities.table_row()) for name, cls in PROVIDERS.items()]
    headers = ["provider", *rows[0][1].keys()]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, row in rows:
        lines.append("| " + " | ".join([f"`{name}`", *row.values()]) + " |")
    return "\n".join(lines)


def capability_notes() -> str:
    """What each adapter assumes beyond its provider's documents, as a markdown list."""
    out = []
    for name, cls in PROVIDERS.items():
        for note in cls.capabilities.notes:
            out.append(f"- `{name}`: {note}")
    return "\n".join(out)


__all__ = [
    "PROVIDERS",
    "Capabilities",
    "GptImage2AIProvider",
    "LenientOfflineProvider",
    "OfflineProvider",
    "OpenAIProvider",
    "PreparedInputs",
    "Provider",
    "RunwareProvider",
    "ScenarioProvider",
    "SkillsVideoProvider",
    "capability_notes",
    "capability_table",
]
