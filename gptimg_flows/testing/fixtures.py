"""Pytest fixtures: one emulator subprocess per session, reset before every test.

Registered by tests/conftest.py through `pytest_plugins`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gptimg_flows.testing.client import EmulatorClient, EmulatorProcess
from gptimg_flows.testing.config import EmulatorConfig

#: Session defaults: quick jobs so tests stay fast; tests raise latency where they need it.
TEST_CONFIG = EmulatorConfig(latency=0.1, url_ttl=60.0, retry_after=0.1)


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[EmulatorProcess]:
    """The emulator running as a subprocess on a free port of 127.0.0.1."""
    with EmulatorProcess(TEST_CONFIG) as process:
        yield process


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> Iterator[EmulatorClient]:
    """A control client on a freshly reset emulator (ledger, jobs and config reset)."""
    client = emulator_process.client
    client.reset(config=True)
    yield client
