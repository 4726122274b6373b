"""Shared fixtures: a real Prefect API server, moto's S3 server, and the provider emulator."""

from __future__ import annotations

import os

# Before Prefect is imported: room for the first SQLite migration, and no telemetry offline.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# A home of the suite's own: its result store and logs are scanned for secrets, and a
# developer's ~/.prefect is left alone.
os.environ.setdefault("PREFECT_HOME", __import__("tempfile").mkdtemp(prefix="gptimg-tests-"))

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["gptimg_flows.testing.fixtures"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real Prefect API server (temporary SQLite database) for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real `prefect server start` process (fresh SQLite home); its env for subprocesses."""
    from .support.prefect_cli import running_server

    with running_server(tmp_path_factory.mktemp("prefect-home"), free_port()) as env:
        yield env


@pytest.fixture(autouse=True)
def _fresh_rate_limiters() -> None:
    """Every test meets the emulator's accounts as a new process would: a pace learned from
    one test's 429s must not slow the next one's submits."""
    from gptimg_flows.engine.rate_limiter import forget_limiters
    from gptimg_flows.engine.route_health import forget_health

    forget_limiters()
    forget_health()


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, as s3fs talks to real S3."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str) -> Any:
    """A boto3 client of moto's server, with its own keys (tests that must run without AWS_*
    variables still put and list objects with it)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def s3_archive(s3_endpoint: str, s3_client: Any) -> tuple[str, dict[str, Any]]:
    """A fresh bucket; returns (basepath, storage_options) for ImageArchive."""
    options: dict[str, Any] = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
        "skip_instance_cache": True,
    }
    bucket = f"archive-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/images-test", options


@pytest.fixture
def provider_block(emulator: Any) -> Any:
    """`provider_block("scenario")`: a credentials block pointed at the emulator."""
    from gptimg_flows.blocks.credentials import CREDENTIAL_BLOCKS
    from gptimg_flows.testing.config import EMULATOR_KEYS

    by_name = {cls.provider_name: cls for cls in CREDENTIAL_BLOCKS}

    def make(name: str, **overrides: Any) -> Any:
        key = EMULATOR_KEYS[name]
        fields: dict[str, Any] = {"base_url": emulator.base_url(name)}
        if isinstance(key, tuple):
            fields["api_key"], fields["api_secret"] = key
        else:
            fields["api_key"] = key
        fields.update(overrides)
        return by_name[name](**fields)

    return make
