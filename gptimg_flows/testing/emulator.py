"""One ASGI app speaking all five providers' HTTP APIs, for tests and benchmarks without keys.

Run it: `python -m gptimg_flows.testing.emulator --port 8000`. Wire formats follow
docs/wire.md; `/_emulator/*` controls it (config, forced faults, ledger, reset) and
`/files/<token>.<ext>` serves outputs through expiring URLs.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gptimg_flows.testing import (
    routes_gptimage2,
    routes_openai,
    routes_openai_batch,
    routes_runware,
    routes_scenario,
    routes_skillsvideo,
)
from gptimg_flows.testing.config import EMULATOR_KEYS, PREFIXES, EmulatorConfig, ForcedFault
from gptimg_flows.testing.faults import (
    RAW_SEND,
    DroppedConnection,
    expired_response,
    not_found_response,
    not_image_response,
)
from gptimg_flows.testing.images import pad_length, padded_size, stream
from gptimg_flows.testing.state import Emulator, emulator_of, json_body

__all__ = ["EMULATOR_KEYS", "EmulatorApp", "EmulatorConfig", "create_app", "main", "run_emulator"]

log = logging.getLogger("gptimg_flows.testing.emulator")


class EmulatorApp(Starlette):
    """Starlette, plus the server's raw `send` kept in the scope so faults can drop sockets."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


# -- files -------------------------------------------------------------------------------------


async def serve_file(request: Request) -> Response:
    """Outputs and uploaded inputs, streamed; expired URLs answer 403 like a CDN."""
    emu = emulator_of(request)
    name = request.path_params["name"]
    token = name.rsplit(".", 1)[0]
    entry = emu.files.get(token)
    if entry is None:
        emu.ledger.request("files", "download")
        return not_found_response(request.url.path)
    provider = entry.provider
    emu.ledger.request(provider, "download")
    now = emu.now()
    if entry.expires_at is not None and now >= entry.expires_at:
        expired_wall = emu_wall(emu, entry.expires_at)
        return expired_response(request.url.path, expired_wall)
    if entry.spec is not None:
        kind = emu.fault(provider, "download", request.url.path)
        if kind == "download_not_image":
            return not_image_response()
        data = await emu.renderer.get(entry.spec, emu.config.render_mode)
        pad = pad_length(data, entry.spec.fmt, emu.config.pad_to_bytes)
    else:
        item = emu.inputs.get(entry.input_sha or "")
        if item is None:
            return not_found_response(request.url.path)
        kind, data, pad = None, item.data, 0
    total = padded_size(data, pad)
    if kind == "download_truncate":
        half = bytearray()
        async for piece in stream(data, pad, limit=total // 2):
            half.extend(piece)
        return DroppedConnection(bytes(half), declared=total, media_type=entry.mime)
    headers = {"content-length": str(total), "cache-control": "private, max-age=60"}
    return StreamingResponse(stream(data, pad), media_type=entry.mime, headers=headers)


def emu_wall(emu: Emulator, monotonic_at: float) -> float:
    """A monotonic instant as wall-clock time (for Expires headers)."""
    return time.time() - (emu.now() - monotonic_at)


# -- control -----------------------------------------------------------------------------------


async def get_ledger(request: Request) -> Response:
    return JSONResponse(emulator_of(request).ledger_view())


async def get_config(request: Request) -> Response:
    return JSONResponse(emulator_of(request).config_view())


async def _object_body(request: Request) -> dict[str, Any]:
    if not await request.body():
        return {}
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


async def post_config(request: Request) -> Response:
    emu = emulator_of(request)
    try:
        emu.configure(await _object_body(request))
    except (ValueError, ValidationError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(emu.config_view())


async def post_reset(request: Request) -> Response:
    """Clear ledger, jobs, files and faults' RNG; `{"reset_config": true}` restores the config
    the emulator started with; `{"config": {...}}` then applies a partial config."""
    emu = emulator_of(request)
    try:
        body = await _object_body(request)
        emu.reset(reset_config=bool(body.get("reset_config", False)))
        if body.get("config"):
            emu.configure(body["config"])
    except (ValueError, ValidationError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"ok": True, "config": emu.config_view()})


async def post_force(request: Request) -> Response:
    """Append one forced fault to the queue: `{"kind", "provider"?, "count"?}`."""
    emu = emulator_of(request)
    try:
        emu.push_fault(ForcedFault.model_validate(await _object_body(request)))
    except (ValueError, ValidationError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"force": emu.config_view()["force"]})


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


# -- app ---------------------------------------------------------------------------------------


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """The emulator app. Its state lives in `app.state.emulator` (an `Emulator`)."""
    emulator = Emulator(config or EmulatorConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await emulator.aclose()

    routes: list[Any] = [
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/ledger", get_ledger, methods=["GET"]),
        Route("/_emulator/config", get_config, methods=["GET"]),
        Route("/_emulator/config", post_config, methods=["POST"]),
        Route("/_emulator/reset", post_reset, methods=["POST"]),
        Route("/_emulator/force", post_force, methods=["POST"]),
        Route("/files/{name}", serve_file, methods=["GET"]),
    ]
    routes += routes_openai.routes(PREFIXES["openai"])
    routes += routes_openai_batch.routes(PREFIXES["openai"])
    routes += routes_scenario.routes(PREFIXES["scenario"])
    routes += routes_runware.routes(PREFIXES["runware"])
    routes += routes_skillsvideo.routes(PREFIXES["skillsvideo"])
    routes += routes_gptimage2.routes(PREFIXES["gptimage2ai"])
    app = EmulatorApp(routes=routes, lifespan=lifespan)
    app.state.emulator = emulator
    return app


class _QuietDrops(logging.Filter):
    """Deliberately dropped connections are not server errors: keep them out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


def run_emulator(
    port: int = 8000, host: str = "127.0.0.1", config: EmulatorConfig | None = None
) -> None:
    """Serve the emulator in this process until interrupted (quiet, no access log)."""
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
        backlog=4096,
    )


def credentials_env(root: str) -> str:
    """`export VAR=value` lines: the emulator's default keys and each provider's base URL,
    named as `gptimg blocks create` (blocks/from_env.py) reads them."""
    from gptimg_flows.blocks.from_env import SOURCES

    lines = []
    for source in SOURCES:
        key = EMULATOR_KEYS[source.provider]
        values = key if isinstance(key, tuple) else (key,)
        for (_, variable), value in zip(source.secrets, values, strict=True):
            lines.append(f"export {variable}={value}")
        lines.append(f"export {source.base_url_var}={root}{PREFIXES[source.provider]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gptimg_flows.testing.emulator", description=__doc__
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency", type=float, help="seconds from accept to done")
    parser.add_argument("--url-ttl", type=float, help="seconds an output URL stays valid")
    parser.add_argument("--seed", type=int, help="seed for fault rates and pictures")
    parser.add_argument("--config", help="full or partial EmulatorConfig as JSON")
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="print the keys and base URLs it accepts as `export` lines for "
        "`gptimg blocks create`, and exit",
    )
    args = parser.parse_args(argv)
    if args.print_env:
        print(credentials_env(f"http://{args.host}:{args.port}"))
        return
    data: dict[str, Any] = json.loads(args.config) if args.config else {}
    for name in ("latency", "url_ttl", "seed"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    run_emulator(args.port, args.host, EmulatorConfig.model_validate(data))


if __name__ == "__main__":
    main()
