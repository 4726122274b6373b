"""Provider adapters: one module per hosted API, none of them knows Prefect."""

from __future__ import annotations

from gptimg_flows.providers.base import Capabilities, PreparedInputs, Provider
from gptimg_flows.providers.gptimage2ai import GptImage2AIProvider
from gptimg_flows.providers.offline import LenientOfflineProvider, OfflineProvider
from gptimg_flows.providers.openai import OpenAIProvider
from gptimg_flows.providers.runware import RunwareProvider
from gptimg_flows.providers.scenario import ScenarioProvider
from gptimg_flows.providers.skillsvideo import SkillsVideoProvider

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
