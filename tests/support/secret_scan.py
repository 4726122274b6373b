"""Looking for credentials where a user or an attacker could read them after a run.

A `Place` is one thing someone could read (the database files, the Prefect API's logs, the
CLI's output, …): the texts read from it, what must be found there to prove it was read, and
the secrets that must not be. Secrets are looked for whole and in the forms a partial leak
takes: each half, base64 (standard and URL-safe, also of Scenario's `key:secret` Basic-auth
value), hex, URL-encoded, and `Bearer <key>`; case-insensitively. Base64 runs in what is read
(Prefect's result store keeps pickled exceptions as base64) are decoded, and decompressed when
they are gzip/zlib, and scanned as well.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prefect.client.orchestration import get_client


def needles(secrets: dict[str, str], pairs: dict[str, tuple[str, str]]) -> dict[str, bytes]:
    """What a leak of each secret looks like: label → lowercase bytes to look for.

    `secrets`: label → value; `pairs`: label → (key, secret) sent as HTTP Basic auth.
    """

    def b64(label: str, raw: bytes) -> dict[str, bytes]:
        return {
            f"{label} as base64": base64.b64encode(raw).rstrip(b"="),
            f"{label} as url-safe base64": base64.urlsafe_b64encode(raw).rstrip(b"="),
        }

    out: dict[str, bytes] = {}
    for label, value in secrets.items():
        raw = value.encode()
        half = len(raw) // 2
        assert half >= 12, f"{label}: too short to look for its halves"
        out[label] = raw
        out[f"Bearer {label}"] = b"Bearer " + raw
        out[f"{label} (first half)"] = raw[:half]
        out[f"{label} (second half)"] = raw[half:]
        out[f"{label} as hex"] = raw.hex().encode()
        if (quoted := quote(value, safe="")) != value:
            out[f"{label} url-encoded"] = quoted.encode()
        out.update(b64(label, raw))
    for label, (key, secret) in pairs.items():
        out.update(b64(f"Basic auth value of {label}", f"{key}:{secret}".encode()))
    return {label: needle.lower() for label, needle in out.items()}


_B64 = rb"[A-Za-z0-9+/_-]"
_BASE64_RUN = re.compile(_B64 + rb"{4}(?:[\r\n]*" + _B64 + rb"{4}){9,}(?:" + _B64 + rb"{2,3}=?=?)?")
_HEX_OR_ID = re.compile(rb"[0-9a-fA-F-]+")  # UUIDs and digests: not base64


def decoded(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, decoded bytes) of every base64 run of 40+ characters in `data`, decoded from
    each of its first four characters (a word glued to its front shifts the alignment)."""
    out = []
    for match in _BASE64_RUN.finditer(data):
        text = re.sub(rb"\s+", b"", match.group()).rstrip(b"=")
        if _HEX_OR_ID.fullmatch(text):
            continue
        text = text.replace(b"-", b"+").replace(b"_", b"/")
        for shift in range(4):
            chunk = text[shift:]
            chunk = chunk[: len(chunk) - (len(chunk) % 4 == 1)]
            try:
                raw = base64.b64decode(chunk + b"=" * (-len(chunk) % 4), validate=True)
            except (binascii.Error, ValueError):
                continue
            with contextlib.suppress(zlib.error):  # gzip or zlib data; anything after it ignored
                raw = zlib.decompressobj(wbits=47).decompress(raw)
            out.append((match.start() + shift, raw))
    return out


@dataclass
class Place:
    """One place a user or an attacker could read, and what reading it found."""

    name: str
    texts: list[tuple[str, bytes]] = field(default_factory=list)  # (where exactly, content)
    evidence: list[str] = field(default_factory=list)  # must all be found: proof it was read

    def add(self, where: str, content: bytes | str) -> None:
        data = content.encode() if isinstance(content, str) else content
        self.texts.append((where, data))
        for at, raw in decoded(data):
            self.texts.append((f"{where} (base64 at byte {at}, decoded)", raw))

    @property
    def read(self) -> list[tuple[str, bytes]]:
        """What was read, without the decoded copies."""
        return [(where, data) for where, data in self.texts if "decoded)" not in where]

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.read)

    def missing_evidence(self) -> list[str]:
        blob = b"\n".join(
            where.lower().encode() + b"\n" + data.lower() for where, data in self.texts
        )
        return [e for e in self.evidence if e.lower().encode() not in blob]

    def leaks(self, needles: dict[str, bytes]) -> list[str]:
        """One line per leaking item: where, which forms of which secrets, and some context."""
        found = []
        for where, data in self.texts:
            low = data.lower()
            labels = [label for label, needle in needles.items() if needle in low]
            if labels:
                at = low.index(needles[labels[0]])
                context = data[max(0, at - 100) : at + len(needles[labels[0]]) + 40]
                found.append(f"{self.name}: {where}: {', '.join(labels)}: {context!r}")
        return found


def read_files(place: Place, root: Path) -> None:
    """Every file under `root`, raw bytes (SQLite's -wal/-shm, hidden temp files included)."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            place.add(str(path), path.read_bytes())


def read_s3(place: Place, basepath: str, storage_options: dict[str, Any]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**storage_options)
    for key in sorted(fs.find(basepath.split("://", 1)[1])):
        place.add(f"s3://{key}", fs.cat_file(key))


# -- the Prefect API, read as the UI (or anyone holding its URL) reads it ----------------------


async def _post(client: Any, path: str, body: dict[str, Any]) -> Any:
    response = await client._client.post(path, json=body)
    response.raise_for_status()
    return response.json()


async def _get(client: Any, path: str) -> Any:
    response = await client._client.get(path)
    response.raise_for_status()
    return response.json()


async def _paged(client: Any, path: str, body: dict[str, Any], page: int = 200) -> list[Any]:
    items: list[Any] = []
    while True:
        batch = await _post(client, path, {**body, "limit": page, "offset": len(items)})
        items += batch
        if len(batch) < page:
            return items


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


async def read_prefect_api(since: str) -> dict[str, Place]:
    """Everything the API serves about the runs started after `since` (ISO time): flow runs
    (parameters, states and their messages), task runs and their states, logs, artifacts and
    events; and every block document, read without secrets."""
    places = {
        name: Place(f"Prefect API: {name}")
        for name in (
            "flow runs",
            "flow run states",
            "task runs",
            "task run states",
            "logs",
            "artifacts",
            "events",
            "block documents",
        )
    }
    async with get_client() as client:
        flow_runs = await _paged(
            client, "/flow_runs/filter", {"flow_runs": {"expected_start_time": {"after_": since}}}
        )
        ids = [run["id"] for run in flow_runs]
        for run in flow_runs:
            places["flow runs"].add(f"flow run {run['name']} ({run['id']})", _dump(run))
            states = await _get(client, f"/flow_run_states/?flow_run_id={run['id']}")
            places["flow run states"].add(f"states of flow run {run['name']}", _dump(states))
        task_runs = await _paged(client, "/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
        for run in task_runs:
            places["task runs"].add(f"task run {run['name']} ({run['id']})", _dump(run))
            states = await _get(client, f"/task_run_states/?task_run_id={run['id']}")
            places["task run states"].add(f"states of task run {run['name']}", _dump(states))
        logs = await _paged(client, "/logs/filter", {"logs": {"timestamp": {"after_": since}}})
        for entry in logs:
            places["logs"].add(f"log of {entry.get('flow_run_id')} ({entry['name']})", _dump(entry))
        artifacts = await _paged(client, "/artifacts/filter", {"flow_runs": {"id": {"any_": ids}}})
        for artifact in artifacts:
            places["artifacts"].add(f"artifact {artifact['id']}", _dump(artifact))
        answer = await _post(
            client, "/events/filter", {"filter": {"occurred": {"since": since}}, "limit": 50}
        )
        while True:
            for event in answer["events"]:
                places["events"].add(f"event {event['event']} ({event['id']})", _dump(event))
            if not answer.get("next_page"):
                break
            response = await client._client.get(answer["next_page"])
            response.raise_for_status()
            answer = response.json()
        documents = await _paged(
            client,
            "/block_documents/filter",
            {"block_documents": {"is_anonymous": None}, "include_secrets": False},
        )
        for doc in documents:
            places["block documents"].add(f"block document {doc['name']}", _dump(doc))
    return places


async def read_prefect_api_until(
    since: str, evidence: dict[str, list[str]], timeout: float = 30.0
) -> dict[str, Place]:
    """`read_prefect_api`, again until each place shows its `evidence`: the server writes the
    logs and events it was sent a moment after it acknowledged them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        places = await read_prefect_api(since)
        for name, place in places.items():
            place.evidence = evidence[name]
        if loop.time() > deadline or not any(p.missing_evidence() for p in places.values()):
            return places
        await asyncio.sleep(1.0)
