"""Bad input, table-driven: each case is a clear error, and none spends a credit it should not.

Every case runs a real flow (`generate_images`, `edit_image` or `batch_generate`) on the real
Prefect server against the HTTP emulator, then checks three things:

1. **the error**: its type (from `gptimg_flows.errors`; for a batch, the item's `error_type`),
   its `.field` where it has one, and a message naming the problem (the field, the value, and
   what is allowed);
2. **the ledger** (`emulator.ledger()`, the provider's side of the story):
   - client-side cases (`reached="nothing"`): no request of any kind reached any provider
     endpoint, so certainly no submission;
   - refusals (`reached="refused"`: 401, 402, OpenAI's quota 429, an HTML 502 page): the
     provider saw exactly the submits we expect (one for 401/402/quota: no retry), refused
     each with that status, and created no job;
   - answers after acceptance (`reached="accepted"`: malformed JSON, an "image" URL serving
     HTML): exactly one submission (the job exists and is paid), one submit request;
3. **the archive**: nothing half-written (see `assert_nothing_half_written` for exactly what
   may remain and why), and no spool file left behind.

`GPTIMG_ALLOW_PRIVATE_URLS` is removed from the environment for every case, so the private
network refusals are the production behaviour.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from PIL import Image

from gptimg_flows import batch_generate, edit_image, generate_images
from gptimg_flows.errors import (
    AuthError,
    InsufficientCredits,
    InvalidOutput,
    InvalidRequest,
    MalformedResponse,
    ServerError,
)
from gptimg_flows.flows import BatchFailure, BatchResult
from gptimg_flows.media.inputs import MAX_INPUT_BYTES
from gptimg_flows.media.reads import ALLOW_PRIVATE_ENV, private_urls_allowed
from gptimg_flows.tasks import RETRIES, SubmitUncertain

pytestmark = pytest.mark.usefixtures("prefect_server")

EMULATED = ("openai", "scenario", "runware", "skillsvideo", "gptimage2ai")
PROMPT = "a lighthouse at dawn"


class WrongErrorType(AssertionError):
    """The flow refused the input, but not with the error type (or field) the table expects."""


# -- what each case runs -----------------------------------------------------------------------


@dataclass
class Ctx:
    """What a case's runner may use: the emulator, block factory, archive, input files."""

    emulator: Any
    block: Callable[..., Any]
    archive: str
    tmp: Path
    files: dict[str, str]

    def provider(self, name: str, creds: dict[str, Any] | None) -> Any:
        """A block pointed at the emulator for an emulated provider; any other name as given
        ("offline", or the name of a credentials block to look up)."""
        return self.block(name, **(creds or {})) if name in EMULATED else name

    def source(self, value: str) -> str:
        """An input: a fixture file by name, or a URL/path (`{emulator}` = its root URL)."""
        return self.files.get(value) or value.format(emulator=self.emulator.url)


Runner = Callable[[Ctx], Awaitable[Any]]


def gen(provider: str, *, creds: dict[str, Any] | None = None, **kw: Any) -> Runner:
    kw.setdefault("prompt", PROMPT)

    async def run(c: Ctx) -> Any:
        archive = kw.pop("archive", c.archive)
        return await generate_images(provider=c.provider(provider, creds), archive=archive, **kw)

    return run


def edit(provider: str, image: str, mask: str | None = None, **kw: Any) -> Runner:
    async def run(c: Ctx) -> Any:
        return await edit_image(
            image=c.source(image),
            mask=c.source(mask) if mask else None,
            prompt="add a moon",
            provider=c.provider(provider, None),
            archive=c.archive,
            **kw,
        )

    return run


def batch(
    provider: str,
    prompts: list[Any] | tuple[str, str] | str,
    *,
    creds: dict[str, Any] | None = None,
    **kw: Any,
) -> Runner:
    """`prompts`: a list, (file name, file text) written to a prompt file first, or the name
    of a file that does not exist."""

    async def run(c: Ctx) -> Any:
        source: list[Any] | str
        if isinstance(prompts, str):
            source = str(c.tmp / prompts)
        elif isinstance(prompts, tuple):
            path = c.tmp / prompts[0]
            path.write_text(prompts[1], encoding="utf-8")
            source = str(path)
        else:
            source = prompts
        return await batch_generate(
            prompts=source,
            provider=c.provider(provider, creds),
            archive=c.archive,
            concurrency=1,
            **kw,
        )

    return run


def configure(**partial: Any) -> Callable[[Ctx], None]:
    return lambda c: c.emulator.configure(**partial)


def force(kind: str, provider: str, count: int = 1) -> Callable[[Ctx], None]:
    return lambda c: c.emulator.force(kind, provider=provider, count=count)


@dataclass(frozen=True)
class Case:
    run: Runner
    error: type[Exception]
    match: str
    field: str | None = None
    #: whose ledger entries are checked (refused / accepted cases)
    provider: str | None = None
    reached: Literal["nothing", "refused", "accepted"] = "nothing"
    #: refused cases: how many submits the provider saw, and the status it refused them with
    submits: int = 1
    status: int | None = None
    setup: Callable[[Ctx], None] | None = None
    fast_retries: bool = False
    #: refused cases whose answer was ambiguous (a 5xx but 503): the provider is asked by our
    #: key after each (Runware's getResponse, answered 400 "no such task"), never paid twice
    looked_up: bool = False


def model_check(case_id: str, case: Case) -> Any:
    """A check of the request model itself (it raises InvalidRequest naming the field)."""
    return pytest.param(case, id=case_id)


CASES = [
    # -- prompts ---------------------------------------------------------------------------
    model_check(
        "empty-prompt-openai",
        Case(gen("openai", prompt=""), InvalidRequest, r"prompt.*empty", field="prompt"),
    ),
    model_check(
        "whitespace-prompt-scenario",
        Case(gen("scenario", prompt=" \n\t "), InvalidRequest, r"prompt.*empty", field="prompt"),
    ),
    model_check(
        "prompt-over-32000-chars-skillsvideo",
        Case(
            gen("skillsvideo", prompt="x" * 32001),
            InvalidRequest,
            r"prompt.*at most 32000 characters",
            field="prompt",
        ),
    ),
    pytest.param(
        Case(
            gen("runware", prompt="a"),
            InvalidRequest,
            r"prompt has 1 characters; Runware takes 2-32000",
            field="prompt",
        ),
        id="prompt-under-runware-minimum-of-2-chars",
    ),
    pytest.param(
        Case(
            batch("offline", ("prompts.jsonl", json.dumps({"prompt": ""}) + "\n")),
            InvalidRequest,
            r"prompt is empty",
        ),
        id="batch-jsonl-empty-prompt-offline",
    ),
    # -- batch files, templates and columns ------------------------------------------------
    pytest.param(
        Case(
            batch("offline", "no-such-prompts.jsonl"),
            InvalidRequest,
            r"prompts: no such file .*no-such-prompts\.jsonl",
            field="prompts",
        ),
        id="batch-missing-prompt-file",
    ),
    pytest.param(
        Case(
            batch("openai", [{"name": "a teapot"}], prompt_template="{name} on {surface}"),
            InvalidRequest,
            r"prompt_template: no row has a column 'surface' \(columns: name\)",
            field="prompt_template",
        ),
        id="batch-template-column-missing-from-every-row",
    ),
    pytest.param(
        Case(
            batch("scenario", [{"prompt": PROMPT, "sizee": "1024x1024"}]),
            InvalidRequest,
            r"column 'sizee' is not a request field; did you mean 'size'\?",
            field="sizee",
        ),
        id="batch-misspelt-request-column",
    ),
    # -- archive and timeout ---------------------------------------------------------------
    pytest.param(
        Case(
            gen("runware", archive="foo://bar"),
            InvalidRequest,
            r"archive: cannot open 'foo://bar' \(Protocol not known: foo\)",
            field="archive",
        ),
        id="archive-with-an-unknown-protocol",
    ),
    pytest.param(
        Case(
            gen("skillsvideo", timeout_seconds=-1),
            InvalidRequest,
            r"timeout_seconds=-1; it must be a positive number of seconds",
            field="timeout_seconds",
        ),
        id="negative-timeout",
    ),
    pytest.param(
        Case(
            batch("offline", [PROMPT], timeout_seconds=0),
            InvalidRequest,
            r"timeout_seconds=0; it must be a positive number of seconds",
            field="timeout_seconds",
        ),
        id="batch-zero-timeout",
    ),
    # -- offline refuses what gpt-image-2 refuses ------------------------------------------
    pytest.param(
        Case(
            gen("offline", output_compression=80),
            InvalidRequest,
            r"output_compression applies only to output_format jpeg or webp.*unset \(png\)",
            field="output_compression",
        ),
        id="offline-compression-with-png",
    ),
    pytest.param(
        Case(
            gen("offline", size="17:3"),
            InvalidRequest,
            r"size 1024x176: offline needs an aspect ratio between 1:3 and 3:1",
            field="size",
        ),
        id="offline-ratio-17-3",
    ),
    pytest.param(
        Case(
            gen("offline", size="1000x1000"),
            InvalidRequest,
            r"size 1000x1000: offline needs width and height that are multiples of 16",
            field="size",
        ),
        id="offline-size-not-multiple-of-16",
    ),
    pytest.param(
        Case(gen("offline", seed=7), InvalidRequest, r"offline cannot honour `seed`", field="seed"),
        id="offline-seed",
    ),
    # -- n ---------------------------------------------------------------------------------
    model_check(
        "n-0-offline",
        Case(gen("offline", n=0), InvalidRequest, r"\bn\b.*greater than or equal to 1", field="n"),
    ),
    pytest.param(
        Case(gen("scenario", n=5), InvalidRequest, r"n=5; Scenario makes 1-4 images", field="n"),
        id="n-5-over-scenario-max-4",
    ),
    pytest.param(
        Case(gen("openai", n=11), InvalidRequest, r"n=11; OpenAI makes 1-10 images", field="n"),
        id="n-11-over-openai-max-10",
    ),
    pytest.param(
        Case(
            batch("gptimage2ai", ("prompts.jsonl", json.dumps({"prompt": PROMPT, "n": 5}))),
            InvalidRequest,
            r"n=5; gptimage2\.ai makes 1-4 images",
        ),
        id="batch-jsonl-n-5-over-gptimage2ai-max-4",
    ),
    # -- sizes and ratios ------------------------------------------------------------------
    pytest.param(
        Case(
            gen("runware", size="1000x1024"),
            InvalidRequest,
            r"size 1000x1024: Runware needs width and height that are multiples of 16",
            field="size",
        ),
        id="width-not-multiple-of-16-runware",
    ),
    pytest.param(
        Case(
            batch("runware", [PROMPT], size="1024x1000"),
            InvalidRequest,
            r"size 1024x1000: Runware needs width and height that are multiples of 16",
        ),
        id="batch-height-not-multiple-of-16-runware",
    ),
    pytest.param(
        Case(
            gen("openai", size="3840x3840"),
            InvalidRequest,
            r"size 3840x3840: OpenAI allows at most 8,294,400 pixels \(this is 14,745,600\)",
            field="size",
        ),
        id="size-over-pixel-cap-openai",
    ),
    pytest.param(  # #33: every rule it breaks at once, and what the provider takes
        Case(
            gen("openai", size="1000x5000"),
            InvalidRequest,
            r"size 1000x5000: OpenAI needs width and height that are multiples of 16; takes "
            r"sides from 16 to 3840; needs an aspect ratio between 1:3 and 3:1\. It takes WxH, "
            r"multiples of 16, sides 16-3840, ≤8,294,400 px, auto \(e\.g\. 1024x1024, 1536x1024",
            field="size",
        ),
        id="every-broken-size-rule-at-once-openai",
    ),
    pytest.param(
        Case(
            gen("scenario", size="3840x1024"),
            InvalidRequest,
            r"size 3840x1024: Scenario needs an aspect ratio between 1:3 and 3:1",
            field="size",
        ),
        id="aspect-ratio-beyond-3-to-1-scenario",
    ),
    pytest.param(
        Case(
            gen("scenario", size="auto"),
            InvalidRequest,
            r"Scenario needs an explicit size, not auto",
            field="size",
        ),
        id="size-auto-scenario",
    ),
    pytest.param(
        Case(
            gen("skillsvideo", size="5:4"),
            InvalidRequest,
            r"aspect ratio 5:4 is not offered by skills\.video; allowed: 1:1, 16:9, 9:16",
            field="size",
        ),
        id="ratio-5-4-skillsvideo",
    ),
    pytest.param(
        Case(
            gen("skillsvideo", size="4096x4096"),
            InvalidRequest,
            r"size 4096x4096: skills\.video's largest tier \(4K\) has a long side of 3840",
            field="size",
        ),
        id="size-beyond-4k-tier-skillsvideo",
    ),
    pytest.param(
        Case(
            batch("gptimage2ai", ("prompts.csv", f"prompt,size\n{PROMPT},3:2\n")),
            InvalidRequest,
            r"aspect ratio 3:2 is not offered by gptimage2\.ai; allowed: 1:1, 16:9, 9:16, 4:3, 3:4",
        ),
        id="batch-csv-ratio-3-2-gptimage2ai",
    ),
    # -- masks -----------------------------------------------------------------------------
    pytest.param(
        Case(
            edit("runware", "photo", mask="mask"),
            InvalidRequest,
            r"Runware does not support masks; use openai, scenario or skillsvideo",
            field="mask",
        ),
        id="mask-on-runware",
    ),
    pytest.param(
        Case(
            edit("gptimage2ai", "https://example.com/photo.png", mask="mask"),
            InvalidRequest,
            r"gptimage2\.ai does not support masks",
            field="mask",
        ),
        id="mask-on-gptimage2ai",
    ),
    pytest.param(
        Case(
            edit("openai", "photo", mask="mask_small"),
            InvalidRequest,
            r"mask is 32x32 but the image is 64x64; they must be the same size",
            field="mask",
        ),
        id="mask-smaller-than-image-openai",
    ),
    pytest.param(
        Case(
            edit("scenario", "photo", mask="mask_no_alpha"),
            InvalidRequest,
            r"mask has no alpha channel and is not a black-and-white mask",
            field="mask",
        ),
        id="mask-without-alpha-scenario",
    ),
    pytest.param(
        Case(
            edit("openai", "photo", mask="not_an_image"),
            InvalidRequest,
            r"mask: .*not_an_image\.png is not an image",
            field="mask",
        ),
        id="mask-not-an-image-openai",
    ),
    # -- reference images ------------------------------------------------------------------
    pytest.param(
        Case(
            edit("skillsvideo", "not_an_image"),
            InvalidRequest,
            r"images\[0\]: .*not_an_image\.png is not an image",
            field="images[0]",
        ),
        id="reference-not-an-image-skillsvideo",
    ),
    pytest.param(
        Case(
            edit("offline", "missing"),
            InvalidRequest,
            r"images\[0\]: no such file .*missing\.png",
            field="images[0]",
        ),
        id="reference-missing-file-offline",
    ),
    pytest.param(
        Case(
            edit("openai", "huge"),
            InvalidRequest,
            rf"images\[0\]: .*huge\.png is larger than the {MAX_INPUT_BYTES:,}-byte cap",
            field="images[0]",
        ),
        id="reference-over-50mb-cap-openai",
    ),
    # -- URLs we must not fetch ------------------------------------------------------------
    pytest.param(
        Case(
            edit("offline", "file:///etc/hostname"),
            InvalidRequest,
            r"images\[0\]: file:// URLs are not fetched",
            field="images[0]",
        ),
        id="file-url-reference-offline",
    ),
    pytest.param(
        Case(
            edit("scenario", "http://169.254.169.254/latest/meta-data/iam/"),
            InvalidRequest,
            r"images\[0\]: .* points into a private or reserved network \(169\.254\.169\.254\)",
            field="images[0]",
        ),
        id="cloud-metadata-169-254-169-254-scenario",
    ),
    pytest.param(
        Case(
            edit("openai", "photo", mask="http://10.1.2.3/mask.png"),
            InvalidRequest,
            r"mask: .* points into a private or reserved network \(10\.1\.2\.3\)",
            field="mask",
        ),
        id="private-10-x-mask-openai",
    ),
    pytest.param(
        Case(
            edit("skillsvideo", "{emulator}/files/photo.png"),
            InvalidRequest,
            r"images\[0\]: .* points into a private or reserved network \(127\.0\.0\.1\)",
            field="images[0]",
        ),
        id="loopback-127-x-skillsvideo",
    ),
    pytest.param(
        Case(
            edit("gptimage2ai", "http://localhost:9/photo.png"),
            InvalidRequest,
            r"images\[0\]: .* points into a private or reserved network \((127\.0\.0\.1|::1)\)",
            field="images[0]",
        ),
        id="localhost-name-gptimage2ai",
    ),
    # -- credentials -----------------------------------------------------------------------
    pytest.param(
        Case(
            gen("no-such-block"),
            InvalidRequest,
            r"no saved credentials block or route named 'no-such-block'",
            field="provider",
        ),
        id="missing-credentials-block",
    ),
    pytest.param(
        Case(
            gen("gptimg-runware-credentials/no-such-block"),
            InvalidRequest,
            r"provider: no block 'gptimg-runware-credentials/no-such-block'",
            field="provider",
        ),
        id="missing-credentials-block-by-type-slug",
    ),
    pytest.param(
        Case(
            gen("openai", creds={"api_key": " "}),
            ValueError,  # pydantic's ValidationError: the block itself refuses it (#33)
            r"OpenAIImageCredentials.api_key is empty: give the key",
        ),
        id="blank-api-key-openai",
    ),
    pytest.param(
        Case(
            gen("scenario", creds={"api_secret": "wrong-secret"}),
            AuthError,
            r"\[scenario\b[^\]]*HTTP 401\] credentials refused",
            provider="scenario",
            reached="refused",
            status=401,
        ),
        id="wrong-key-401-not-retried-scenario",
    ),
    pytest.param(
        Case(
            batch("runware", [PROMPT], creds={"api_key": "wrong-key"}),
            AuthError,
            r"\[runware\b[^\]]*HTTP 401\] credentials refused",
            provider="runware",
            reached="refused",
            status=401,
        ),
        id="batch-wrong-key-401-not-retried-runware",
    ),
    # -- out of credits --------------------------------------------------------------------
    pytest.param(
        Case(
            gen("runware", size="1024x1024"),
            InsufficientCredits,
            r"\[runware\b[^\]]*HTTP 402\] out of credits",
            provider="runware",
            reached="refused",
            status=402,
            setup=configure(balance={"runware": 0.0}),
        ),
        id="out-of-credits-402-runware",
    ),
    pytest.param(
        Case(
            gen("skillsvideo", size="1:1"),
            InsufficientCredits,
            r"\[skillsvideo\b[^\]]*HTTP 402\] out of credits",
            provider="skillsvideo",
            reached="refused",
            status=402,
            setup=configure(balance={"skillsvideo": 0.0}),
        ),
        id="out-of-credits-402-skillsvideo",
    ),
    pytest.param(
        Case(
            gen("openai", size="1024x1024"),
            InsufficientCredits,
            r"\[openai\b[^\]]*HTTP 429\] out of credits: .*quota",
            provider="openai",
            reached="refused",
            status=429,
            setup=configure(balance={"openai": 0.0}),
        ),
        id="openai-insufficient-quota-429-not-retried",
    ),
    # -- answers that are not what the API documents ---------------------------------------
    pytest.param(
        Case(
            gen("scenario", size="256x256"),
            MalformedResponse,
            r"\[scenario\b[^\]]*HTTP 200\] answer is not JSON \(application/json\)",
            provider="scenario",
            reached="accepted",
            setup=force("malformed_json", "scenario"),
        ),
        id="malformed-json-after-submit-scenario",
    ),
    pytest.param(
        Case(
            gen("openai", size="256x256"),
            MalformedResponse,
            r"\[openai\b[^\]]*HTTP 200\] answer is not JSON \(application/json\)",
            provider="openai",
            reached="accepted",
            setup=force("malformed_json", "openai"),
        ),
        id="malformed-json-after-submit-openai",
    ),
    pytest.param(
        Case(
            gen("runware", size="256x256"),
            ServerError,
            r"\[runware\b[^\]]*HTTP 502\] server error: 502 Bad Gateway",
            provider="runware",
            reached="refused",
            status=502,
            submits=RETRIES + 1,
            fast_retries=True,
            setup=force("html_error", "runware", count=RETRIES + 1),
            looked_up=True,
        ),
        id="html-502-page-on-every-attempt-runware",
    ),
    pytest.param(
        Case(
            gen("skillsvideo", size="1:1"),
            InvalidOutput,
            r"output 0 URL serves text/html, not an image",
            provider="skillsvideo",
            reached="accepted",
            setup=force("download_not_image", "skillsvideo"),
        ),
        id="image-url-serves-html-skillsvideo",
    ),
    pytest.param(
        Case(
            batch("gptimage2ai", [PROMPT], size="1:1"),
            InvalidOutput,
            r"output 0 URL serves text/html, not an image",
            provider="gptimage2ai",
            reached="accepted",
            setup=force("download_not_image", "gptimage2ai"),
        ),
        id="batch-image-url-serves-html-gptimage2ai",
    ),
]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def production_url_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Downloads spool here, so a partial download left behind would be seen."""
    path = tmp_path / "spool"
    monkeypatch.setenv("GPTIMG_SPOOL", str(path))
    return path


def input_files(root: Path) -> dict[str, str]:
    """Small inputs: a 64x64 photo, masks that are wrong in one way each, a text file named
    .png, a path that does not exist, and a sparse file one byte over the input cap."""
    root.mkdir()
    photo = Image.new("RGB", (64, 64), (40, 90, 160))
    photo.paste((220, 200, 40), (16, 16, 48, 48))
    photo.save(root / "photo.png")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 64, 32))
    mask.save(root / "mask.png")
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(root / "mask_small.png")
    grey = Image.linear_gradient("L").resize((64, 64))  # many grey levels, no alpha
    Image.merge("RGB", (grey, grey, grey)).save(root / "mask_no_alpha.png")
    (root / "not_an_image.png").write_text("<html><body>not a picture</body></html>\n")
    with (root / "huge.png").open("wb") as fh:
        fh.truncate(MAX_INPUT_BYTES + 1)  # sparse: no 50 MB written to disk
    names = ["photo", "mask", "mask_small", "mask_no_alpha", "not_an_image", "huge", "missing"]
    return {name: str(root / f"{name}.png") for name in names}


# -- checks ------------------------------------------------------------------------------------


async def outcome(case: Case, ctx: Ctx) -> Exception | BatchFailure:
    """The error a flow raised, or the one failure a one-item batch reported."""
    try:
        result = await case.run(ctx)
    except Exception as exc:
        return exc
    assert isinstance(result, BatchResult), f"the flow accepted the bad input: {result!r}"
    assert not result.images, "a failed batch item archived images"
    assert len(result.failures) == 1, result.failures
    return result.failures[0]


def assert_ledger(case: Case, ledger: dict[str, Any]) -> None:
    if case.reached == "nothing":
        assert ledger["submissions"] == [], "a bad input was submitted"
        assert ledger["requests"] == {}, f"a bad input reached a provider: {ledger['requests']}"
        assert ledger["rejected"] == {}, ledger["rejected"]
        return
    p = case.provider
    assert p is not None
    requests = ledger["requests"].get(p, {})
    others = {k: v for k, v in requests.items() if k != "submit" and v}
    submissions = [s for s in ledger["submissions"] if s["provider"] == p]
    if case.reached == "refused":
        assert requests.get("submit") == case.submits, (
            f"submits {requests} (expected {case.submits})"
        )
        rejected = {str(case.status): case.submits}
        if case.looked_up:
            rejected["400"] = case.submits  # each lookup: Runware has no task under our key
        assert ledger["rejected"] == {p: rejected}, ledger["rejected"]
        assert submissions == [], "the provider refused, yet a job was created"
        lookups = {"poll": case.submits} if case.looked_up else {}  # getResponse is a poll
        assert others == lookups, f"after a refused submit nothing else is asked: {others}"
    else:
        assert requests.get("submit") == 1, f"the accepted submit was sent again: {requests}"
        assert len(submissions) == 1, f"expected exactly one paid job: {submissions}"
    assert set(ledger["requests"]) <= {p}, f"other providers were called: {ledger['requests']}"


def assert_nothing_half_written(root: Path, case: Case, ledger: dict[str, Any]) -> None:
    """List every file under the archive (hidden ones included) and accept only:

    - for a job the provider accepted and billed (`reached="accepted"`), `_jobs/<key>.json`:
      the idempotency record of that paid submit (README, "Never paying twice"), which a re-run
      reads so as not to pay again. It must be a whole JSON object for its own key, either
      `{"state": "submitted", "job": {...}}` naming the job the ledger shows, or
      `{"state": "submitting"}` (the answer was lost: a re-run must stop, not pay again).

    Anything else is refused: an image or sidecar under `images/` (nothing was produced), a
    `_results/` record (it says the request is done), `_staging/` leftovers, a hidden or
    `.tmp`/`.part` file (an interrupted atomic write), or a job record for a job that was
    never accepted (401/402/502: the provider created nothing, so nothing may be polled).
    """
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
    paid = {s["job_id"] for s in ledger["submissions"]}
    problems: list[str] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        parts = rel.split("/")
        if any(part.startswith(".") for part in parts) or rel.endswith((".tmp", ".part")):
            problems.append(f"{rel}: temporary/partial file left behind")
            continue
        if case.reached != "accepted" or len(parts) != 2 or parts[0] != "_jobs":
            problems.append(f"{rel}: nothing may be archived for this failed request")
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            problems.append(f"{rel}: not a whole JSON record ({exc})")
            continue
        key = parts[1].removesuffix(".json")
        state = record.get("state") if isinstance(record, dict) else None
        if state == "submitted":
            if record.get("job", {}).get("key") != key:
                problems.append(f"{rel}: its job is not under its own key: {record}")
            if record.get("job", {}).get("job_id") not in paid:
                problems.append(f"{rel}: names a job the provider never accepted: {record}")
        elif state != "submitting" or record.get("key") != key:
            problems.append(f"{rel}: not a job record: {record}")
    assert not problems, "archive holds:\n" + "\n".join(problems)


def assert_error(case: Case, got: Exception | BatchFailure) -> None:
    """Type and field; raises WrongErrorType when they differ."""
    if isinstance(got, BatchFailure):
        if got.error_type != case.error.__name__:
            raise WrongErrorType(f"batch item failed with {got.error_type}: {got.error}")
        return
    if not isinstance(got, case.error):
        raise WrongErrorType(f"expected {case.error.__name__}, got {type(got).__name__}: {got}")
    if case.field is not None and getattr(got, "field", None) != case.field:
        raise WrongErrorType(f"field is {getattr(got, 'field', None)!r}, not {case.field!r}")


# -- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
async def test_bad_input_fails_clearly_without_spending_or_half_writing(
    case: Case,
    emulator: Any,
    provider_block: Any,
    archive_dir: Path,
    tmp_path: Path,
    spool: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not private_urls_allowed(), f"{ALLOW_PRIVATE_ENV} must be unset here"
    ctx = Ctx(emulator, provider_block, str(archive_dir), tmp_path, input_files(tmp_path / "in"))
    if case.setup:
        case.setup(ctx)
    if case.fast_retries:  # the retries still happen (the ledger counts them), just not slowly
        monkeypatch.setattr("gptimg_flows.engine.retry_policy.backoff_delay", lambda *a, **k: 0.0)

    got = await outcome(case, ctx)

    message = got.error if isinstance(got, BatchFailure) else str(got)
    assert re.search(case.match, message, re.DOTALL), f"message does not name it: {message!r}"
    ledger = emulator.ledger()
    assert_ledger(case, ledger)
    assert_nothing_half_written(archive_dir, case, ledger)
    leftovers = sorted(p.name for p in spool.rglob("*") if p.is_file()) if spool.exists() else []
    assert leftovers == [], f"partial downloads left in the spool: {leftovers}"
    assert_error(case, got)


@pytest.mark.parametrize("provider", ["scenario", "openai", "runware"])
async def test_a_rerun_after_a_malformed_submit_answer_does_not_pay_again(
    provider: str, emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """The malformed answer came after the provider accepted (and billed) the job: the table
    checks there was exactly one submission; this checks a re-run keeps it at one, as the
    README's "Never paying twice" promises (poll it, or stop with SubmitUncertain)."""
    kw: dict[str, Any] = {
        "prompt": PROMPT,
        "provider": provider_block(provider),
        "archive": str(archive_dir),
        "size": "256x256",
    }
    emulator.force("malformed_json", provider=provider)
    if provider == "runware":  # asked by our taskUUID at once: the job is found and collected
        assert len(await generate_images(**kw)) == 1
    else:
        with pytest.raises(MalformedResponse):
            await generate_images(**kw)
    try:
        await generate_images(**kw)
    except SubmitUncertain as exc:
        assert re.search(r"may have been billed.*remake_uncertain=True", str(exc)), exc
    paid = [s["job_id"] for s in emulator.ledger()["submissions"] if s["provider"] == provider]
    assert len(paid) == 1, f"the re-run paid again: jobs {paid}"
