"""Choosing faults (forced queue first, then seeded rates) and acting them out on the wire.

A fault is decided at the stage where it would happen for real: before a job exists
(`submit`: nothing is charged), just after it was created (`accepted`: the job exists and is
charged, so `submit_lost_response`, `malformed_json` and `gateway_504` cost credits), when the
job is set up (`job`), as each output is drawn (`text`: `misspell_text` draws the prompt's
quoted text misspelt, as a model may), on a poll, when an output URL is issued (`url`), and
on a download.
"""

from __future__ import annotations

import asyncio
import random
import time
from email.utils import formatdate
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gptimg_flows.testing.config import EmulatorConfig, ForcedFault

#: Fault kinds by the stage that can produce them, in the order rates are drawn.
STAGES: dict[str, tuple[str, ...]] = {
    "submit": ("submit_429", "submit_500", "submit_503", "submit_drop", "html_error"),
    "accepted": ("submit_lost_response", "malformed_json", "gateway_504"),
    "job": ("job_fail",),
    "text": ("misspell_text",),
    "poll": ("poll_429", "poll_500", "poll_drop"),
    "url": ("url_expired",),
    "download": ("download_truncate", "download_not_image"),
}

#: The scope key under which the app keeps the server's own `send` (see `DroppedConnection`).
RAW_SEND = "gptimg_emulator.raw_send"


class FaultPicker:
    """Forced faults are consumed first, in order; then each kind of the stage draws its rate.

    The RNG is seeded from the config, so a sequential run injects the same faults every time.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.rng = random.Random(config.seed)
        self.queue: list[dict[str, Any]] = [f.model_dump() for f in config.force]

    def set_queue(self, forced: list[ForcedFault]) -> None:
        self.queue = [f.model_dump() for f in forced]

    def push(self, forced: ForcedFault) -> None:
        self.queue.append(forced.model_dump())

    def pick(self, config: EmulatorConfig, provider: str, stage: str) -> str | None:
        kinds = STAGES[stage]
        for i, entry in enumerate(self.queue):
            if entry["kind"] in kinds and entry["provider"] in (None, provider):
                entry["count"] -= 1
                if entry["count"] <= 0:
                    del self.queue[i]
                return str(entry["kind"])
        for kind in kinds:
            rate = config.rate(provider, kind)
            if rate > 0 and self.rng.random() < rate:
                return kind
        return None


# -- bodies ---------------------------------------------------------------------------------

BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

NOT_IMAGE_HTML = (
    "<!DOCTYPE html><html lang='en'><head><title>Just a moment...</title></head>"
    "<body><h1>Checking your browser before accessing this file.</h1>"
    "<p>This process is automatic. Your browser will redirect shortly.</p></body></html>"
)


def s3_error(code: str, message: str, resource: str, **extra: str) -> str:
    """An S3/CDN-style XML error document."""
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource>{fields}"
        f"<RequestId>emu{int(time.time() * 1000):x}</RequestId></Error>"
    )


def expired_response(resource: str, expired_at: float) -> Response:
    body = s3_error(
        "AccessDenied",
        "Request has expired",
        resource,
        Expires=formatdate(expired_at, usegmt=True),
        ServerTime=formatdate(time.time(), usegmt=True),
    )
    return Response(body, status_code=403, media_type="application/xml")


def not_found_response(resource: str) -> Response:
    body = s3_error("NoSuchKey", "The specified key does not exist.", resource)
    return Response(body, status_code=404, media_type="application/xml")


def html_error_response() -> Response:
    return Response(BAD_GATEWAY_HTML, status_code=502, media_type="text/html")


GATEWAY_TIMEOUT_HTML = BAD_GATEWAY_HTML.replace("502 Bad Gateway", "504 Gateway Time-out")


def gateway_timeout_response() -> Response:
    """A proxy gave up waiting for the origin, which went on to create (and bill) the job."""
    return Response(GATEWAY_TIMEOUT_HTML, status_code=504, media_type="text/html")


def not_image_response() -> Response:
    return Response(NOT_IMAGE_HTML, status_code=200, media_type="text/html")


def malformed_json_response(job_id: str) -> Response:
    """200, says JSON, is not JSON: a proxy cut the body, or a debug page leaked into it."""
    body = '{"id": "' + job_id + '", "status": "que<!-- upstream reset -->'
    return Response(body, status_code=200, media_type="application/json")


# -- dropping connections ---------------------------------------------------------------------


class DroppedConnection(Response):
    """Ends the connection without a complete answer; the client sees a protocol error.

    Under uvicorn the app reaches the connection's transport through the server's own `send`
    (kept in the scope by the app) and closes it: with no `head`, nothing at all is answered.
    Elsewhere it falls back to declaring a Content-Length and sending less, then returning,
    which makes any HTTP/1.1 server close the connection.
    """

    def __init__(
        self,
        head: bytes = b"",
        *,
        declared: int | None = None,
        status_code: int = 200,
        media_type: str = "application/json",
    ) -> None:
        self.head = head
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.body = b""
        length = declared if declared is not None else len(head) + 1024
        self.init_headers({"content-length": str(length)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = _uvicorn_cycle(scope)
        # Read what is left of the request first: closing a socket with unread input makes
        # the kernel send RST (the client would see "connection reset", not a clean drop).
        while cycle is not None and cycle.more_body and not cycle.disconnected:
            message = await receive()
            if message["type"] != "http.request":
                break
        if cycle is None or self.head:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if self.head:
                await send({"type": "http.response.body", "body": self.head, "more_body": True})
        if cycle is not None:
            cycle.transport.close()
            # Let the server notice, so it neither answers 500 nor logs an error.
            for _ in range(200):
                if cycle.disconnected:
                    break
                await asyncio.sleep(0.005)


def _uvicorn_cycle(scope: Scope) -> Any:
    raw_send = scope.get(RAW_SEND)
    cycle = getattr(raw_send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "close") or not hasattr(cycle, "disconnected"):
        return None
    return cycle
