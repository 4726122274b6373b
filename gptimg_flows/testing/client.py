"""Driving the emulator from tests: a small sync control client and a subprocess runner.

The emulator runs as a separate process so it never shares the GIL with the code under test
and survives whatever a test does to its own process tree.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import Any

import httpx

from gptimg_flows.testing.config import PREFIXES, EmulatorConfig


class EmulatorClient:
    """Control and inspect a running emulator: ledger, reset, config, forced faults."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def base_url(self, provider: str) -> str:
        """The `base_url` an adapter for `provider` should use (docs/wire.md)."""
        return self.url + PREFIXES[provider]

    def files_url(self) -> str:
        return self.url + "/files"

    def ledger(self) -> dict[str, Any]:
        return self._get("/_emulator/ledger")

    def config(self) -> dict[str, Any]:
        return self._get("/_emulator/config")

    def configure(self, **partial: Any) -> dict[str, Any]:
        """Merge top-level config fields (pydantic models are accepted as values)."""
        return self._post("/_emulator/config", _plain(partial))

    def reset(self, *, config: bool = False, **partial: Any) -> dict[str, Any]:
        """Clear ledger and jobs; `config=True` also restores the startup config; extra
        keyword arguments are then applied as a partial config."""
        body: dict[str, Any] = {"reset_config": config}
        if partial:
            body["config"] = _plain(partial)
        return self._post("/_emulator/reset", body)

    def force(self, kind: str, provider: str | None = None, count: int = 1) -> list[Any]:
        """Queue a fault that happens the next `count` times its stage is reached."""
        answer = self._post(
            "/_emulator/force", {"kind": kind, "provider": provider, "count": count}
        )
        return list(answer["force"])

    def healthy(self) -> bool:
        try:
            return self._http.get("/_emulator/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmulatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str) -> dict[str, Any]:
        response = self._http.get(path)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._http.post(path, json=body)
        if response.status_code >= 400:
            raise ValueError(f"emulator refused {path}: {response.text}")
        result: dict[str, Any] = response.json()
        return result


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Config values as JSON-safe data (models dumped, tuples as lists)."""
    return json.loads(json.dumps(values, default=_dump))  # type: ignore[no-any-return]


def _dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot send {type(value).__name__} to the emulator")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmulatorProcess:
    """`with EmulatorProcess(config) as emu:` runs the emulator as a subprocess on 127.0.0.1.

    Picks a free port unless given one, waits until the emulator answers, and terminates it
    on exit. `emu.client` is an `EmulatorClient`; `emu.url` its root URL.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._client: EmulatorClient | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def client(self) -> EmulatorClient:
        if self._client is None:
            raise RuntimeError("the emulator is not running")
        return self._client

    def base_url(self, provider: str) -> str:
        return self.client.base_url(provider)

    def start(self) -> EmulatorProcess:
        attempts = 1 if self.port is not None else 3
        for attempt in range(attempts):
            port = self.port if self.port is not None else free_port(self.host)
            if self._launch(port):
                return self
            if attempt == attempts - 1:
                break
        raise RuntimeError(f"the emulator did not start on {self.host} (see its stderr above)")

    def _launch(self, port: int) -> bool:
        command = [
            sys.executable,
            "-m",
            "gptimg_flows.testing.emulator",
            "--host",
            self.host,
            "--port",
            str(port),
            "--config",
            self.config.model_dump_json(),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)  # noqa: S603
        self.port = port
        client = EmulatorClient(self.url)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                client.close()
                self.process = None
                return False
            if client.healthy():
                self._client = client
                return True
            time.sleep(0.05)
        client.close()
        self.stop()
        return False

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
