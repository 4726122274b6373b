"""A run pausing for review makes the server POST a message naming it (notify.py).

Real `prefect server start`, a local HTTP receiver, and the flow in its own process (as a
user's run would be): the server's automation, not our code, must send the message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import aresume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from gptimg_flows.review.notify import (
    install_review_notification,
    remove_review_notification,
    review_payload,
)

from .conftest import free_port
from .support.prefect_cli import api

pytestmark = pytest.mark.slow

PAUSING_FLOW = """
import asyncio
import json

from prefect import flow
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput


class ReviewInput(RunInput):
    approved: list[int] = []
    new_prompt: str | None = None
    note: str = ""


@flow(name="notify-probe")
async def notify_probe() -> dict:
    answer = await apause_flow_run(
        wait_for_input=ReviewInput, timeout=120, poll_interval=1, key="review-1"
    )
    return answer.model_dump()


if __name__ == "__main__":
    print("ANSWER", json.dumps(asyncio.run(notify_probe())))
"""


@contextmanager
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny HTTP server on 127.0.0.1 recording every request (arrival time, body)."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(
                {
                    "at": time.time(),
                    "path": self.path,
                    "body": body.decode(),
                    "content_type": self.headers.get("Content-Type"),
                }
            )
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _runs(env: dict[str, str], flow_name: str) -> list[dict[str, Any]]:
    return api(env, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})


async def test_a_paused_run_posts_one_message_with_its_id_and_ui_link(
    cli_server: dict[str, str], tmp_path: Path
) -> None:
    env = cli_server
    (tmp_path / "pausing_flow.py").write_text(textwrap.dedent(PAUSING_FLOW))
    with (
        receiver() as (url, received),
        temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}),
    ):
        # What the README tells a team to run, once per server.
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "gptimg"), "notify-review", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "runs awaiting review now POST to the URL" in cli.stdout
        async with get_client() as client:
            (installed,) = await client.read_automations_by_name("gptimg-review-waiting")
        automation_id = await install_review_notification(url)
        assert automation_id == installed.id
        # Installing twice keeps one automation (and one block), so one message per pause.
        assert await install_review_notification(url) == automation_id
        async with get_client() as client:
            (automation,) = await client.read_automations_by_name("gptimg-review-waiting")
        assert [a.type for a in automation.actions] == ["call-webhook"]
        assert automation.trigger.expect == {
            "prefect.flow-run.Paused",
            "prefect.flow-run.Suspended",
        }
        flow = subprocess.Popen(
            [sys.executable, str(tmp_path / "pausing_flow.py")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            run = _wait(
                lambda: next(
                    (r for r in _runs(env, "notify-probe") if r["state_type"] == "PAUSED"), None
                ),
                90,
                "the run to pause",
            )
            paused_at = datetime.fromisoformat(run["state"]["timestamp"]).timestamp()
            _wait(lambda: received, 60, "the webhook")
            delay = received[0]["at"] - paused_at
            message = json.loads(received[0]["body"])
            assert received[0]["content_type"] == "application/json"
            assert received[0]["path"] == "/hook"
            assert message["flow_run_id"] == run["id"]
            assert message["flow_run_name"] == run["name"]
            assert message["flow_name"] == "notify-probe"
            assert message["state"] == "Paused"
            ui_link = f"{env['PREFECT_API_URL'].removesuffix('/api')}/runs/flow-run/{run['id']}"
            assert message["url"] == ui_link
            assert ui_link in message["text"] and run["name"] in message["text"]

            await aresume_flow_run(UUID(run["id"]), run_input={"approved": [1], "note": "ok"})
            out, _ = flow.communicate(timeout=90)
        finally:
            if flow.poll() is None:
                flow.kill()
            await remove_review_notification()
        assert flow.returncode == 0, out[-3000:]
        answer = json.loads(out.split("ANSWER ", 1)[1])
        assert answer == {"approved": [1], "new_prompt": None, "note": "ok"}
        done = api(env, "GET", f"/flow_runs/{run['id']}")
        assert done["state_type"] == "COMPLETED"
        time.sleep(3)  # a second (late) message would have arrived by now
        assert len(received) == 1, received
        async with get_client() as client:
            assert await client.read_automations_by_name("gptimg-review-waiting") == []
            with pytest.raises(ObjectNotFound):
                await client.read_block_document_by_name("gptimg-review-waiting", "webhook")
        print(f"webhook arrived {delay:.2f}s after the Paused state: {received[0]['body']}")


@pytest.mark.parametrize("ui_url", [None, "https://prefect.example.com/"])
async def test_the_payload_renders_to_json_whatever_the_names(ui_url: str | None) -> None:
    """Rendered as the server renders it (sandbox, Prefect's filters), offline."""
    from types import SimpleNamespace

    from prefect.server.events.actions import CallWebhook
    from prefect.server.schemas.core import Flow, FlowRun
    from prefect.server.utilities.user_templates import render_user_template
    from prefect.settings import PREFECT_UI_URL

    template = review_payload(ui_url)
    CallWebhook(block_document_id=UUID(int=1), payload=template)  # the server accepts it
    CallWebhook._register_filters_if_needed()
    run = FlowRun(id=UUID(int=7), name="a \"quoted\" <run> & 'co'", flow_id=UUID(int=8))
    context = {
        "flow_run": run,
        "flow": Flow(id=UUID(int=8), name="gptimg {batch}"),
        "event": SimpleNamespace(
            resource={"prefect.state-name": "Suspended"}, occurred=datetime(2026, 1, 2, 3, 4, 5)
        ),
    }
    with temporary_settings({PREFECT_UI_URL: "http://internal:4200"}):
        message = json.loads(await render_user_template(template, context))
    base = (ui_url or "http://internal:4200/").rstrip("/")
    link = f"{base}/runs/flow-run/{run.id}"
    assert message == {
        "text": f"Flow run {run.name} (flow gptimg {{batch}}) awaits review: {link}",
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "flow_name": "gptimg {batch}",
        "state": "Suspended",
        "url": link,
        "occurred": "2026-01-02 03:04:05",
    }
