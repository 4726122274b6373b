"""Test support: the provider emulator (all five APIs over real HTTP) and its fixtures.

`create_app` and `run_emulator` are imported lazily so that
`python -m gptimg_flows.testing.emulator` does not import its own module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gptimg_flows.testing.client import EmulatorClient, EmulatorProcess, free_port
from gptimg_flows.testing.config import (
    EMULATOR_KEYS,
    FAULT_KINDS,
    PREFIXES,
    PROVIDERS,
    EmulatorConfig,
    FaultKind,
    ForcedFault,
)

if TYPE_CHECKING:
    from gptimg_flows.testing.emulator import create_app, run_emulator

__all__ = [
    "EMULATOR_KEYS",
    "FAULT_KINDS",
    "PREFIXES",
    "PROVIDERS",
    "EmulatorClient",
    "EmulatorConfig",
    "EmulatorProcess",
    "FaultKind",
    "ForcedFault",
    "create_app",
    "free_port",
    "run_emulator",
]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "run_emulator"):
        from gptimg_flows.testing import emulator

        return getattr(emulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
