"""The text check in a run (issue #34): each image made for a request is read back, its check
kept on the image and in its sidecar, and under "remake" a request none of whose images passed
is made again. Below the flows, so adding `text_check` to a flow is a parameter and a call.

A remake is the same request under the slot `<slot>:text-<k>` (k = 1, 2, …): its own key, so it
is paid once, resumed after a crash, and found again by a re-run, which reads every check back
from the sidecars and pays nothing. Remakes stop at `attempts`, at the first passing image, or
when the next one is refused (`max_cost`, the block's daily cap) or fails: the images already
paid for are returned either way.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from prefect.logging import get_run_logger

from gptimg_flows.archive.layout import image_sha
from gptimg_flows.archive.store import Archive
from gptimg_flows.errors import InvalidRequest, ProviderError
from gptimg_flows.models import ArchivedImage
from gptimg_flows.results import BatchFailure
from gptimg_flows.rows import Row, row_expected_text, row_metadata
from gptimg_flows.textcheck import TextCheck, TextCheckMode, check_image, engine_name, require_ocr
from gptimg_flows.textcheck import expected_lines as lines_of
from gptimg_flows.textcheck.expected import ExpectedTextError, check_expected, check_size

#: Makes a request's images under a slot suffix ("" for the request itself).
Make = Callable[[str], Awaitable[list[ArchivedImage]]]


@dataclass(frozen=True)
class TextRule:
    """A run's text check: its mode, the explicit `expected_text` (None: the prompt's quotes)
    and how many remakes a request may have."""

    mode: TextCheckMode = "off"
    expected: list[str] | None = None
    attempts: int = 2

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def given(self, expected: list[str] | None) -> TextRule:
        """This rule with a row's own `expected_text`, where it has one (InvalidRequest when
        the check could not read it reliably)."""
        if expected is None:
            return self
        return replace(self, expected=_valid(expected) if self.on else expected)

    def expected_for(self, prompt: str, fallback: list[str] | None = None) -> list[str]:
        """What an image of `prompt` must read: `expected_text`, else the prompt's quotes,
        else `fallback` (an edit: what its source was checked for). InvalidRequest, before
        anything is paid, when the prompt quotes more than the check reads reliably."""
        lines = lines_of(prompt, self.expected) or list(fallback or [])
        if self.on and lines and self.expected is None:
            _valid(lines, quoted_from_prompt=True)
        return lines


def _valid(expected: object, *, quoted_from_prompt: bool = False) -> list[str]:
    try:
        return check_expected(expected, quoted_from_prompt=quoted_from_prompt)
    except ExpectedTextError as exc:
        raise InvalidRequest(str(exc), field="expected_text") from None


def text_rule(
    mode: TextCheckMode,
    expected: list[str] | None = None,
    attempts: int = 2,
    *,
    batch_api: bool = False,
) -> TextRule:
    """The run's rule, refused before anything is paid when it cannot be kept (`batch_api`:
    a batch_generate whose rows go through the Batch API, where a remake would be a second
    batch a day later)."""
    if batch_api and mode == "remake":
        raise InvalidRequest(
            "text_check='remake' does not work with batch_api=True yet (a remake would be a "
            "second batch, a day later): use text_check='flag' and re-run the flagged rows "
            "with refresh_rows",
            field="text_check",
        )
    if mode not in ("off", "flag", "remake"):
        raise InvalidRequest(
            f"text_check={mode!r}; it is 'off', 'flag' or 'remake'", field="text_check"
        )
    if not 0 <= attempts <= 10:
        raise InvalidRequest(
            f"text_check_attempts={attempts}; it must be 0 to 10", field="text_check_attempts"
        )
    if expected is not None:
        expected = _valid(expected)
    if mode != "off":
        require_ocr()
    return TextRule(mode, expected, attempts)


async def checked(
    make: Make,
    prompt: str,
    rule: TextRule,
    archive: Archive,
    *,
    fallback: list[str] | None = None,
    size: tuple[int, int] | None = None,
) -> list[ArchivedImage]:
    """`make("")`'s images, each with its text check; under "remake", more tries of a request
    none of whose images passed (passing images first, every paid one returned). A check
    that cannot work (text too long, `size` too small) is refused before make pays."""
    expected = rule.expected_for(prompt, fallback)
    if rule.on and expected and size is not None:
        try:
            check_size(*size)
        except ExpectedTextError as exc:
            raise InvalidRequest(str(exc), field="text_check") from None
    images = await make("")
    if not rule.on or not expected:
        return images
    images = await check_all(images, expected, archive)
    if rule.mode != "remake":
        return images
    made = list(images)
    for attempt in range(1, rule.attempts + 1):
        if any(_passed(img) for img in made):
            break
        get_run_logger().info(
            "text check failed for every image of this request (read %r): making it again "
            "(text_check='remake', attempt %d of %d)",
            _shown(made),
            attempt,
            rule.attempts,
        )
        try:
            more = await make(f":text-{attempt}")
        except ProviderError as exc:  # a budget refused it, or the try failed: keep what was made
            get_run_logger().warning(
                "no more text remakes for this request (%s): %s", type(exc).__name__, exc
            )
            break
        made += await check_all(more, expected, archive)
    return sorted(made, key=lambda img: not _passed(img))


async def check_all(
    images: list[ArchivedImage], expected: list[str], archive: Archive
) -> list[ArchivedImage]:
    """Each image with its check: read back from its sidecar when it was checked for the same
    text by the same engine (a re-run reads nothing again), else read by OCR and recorded."""
    return list(await asyncio.gather(*(_check_one(img, expected, archive) for img in images)))


async def _check_one(image: ArchivedImage, expected: list[str], archive: Archive) -> ArchivedImage:
    rel = Archive.sidecar_rel(image.sha256)
    sidecar = await asyncio.to_thread(archive.read_json, rel)
    kept = sidecar.get("text_check") if isinstance(sidecar, dict) else None
    if isinstance(kept, dict):
        try:
            check = TextCheck.model_validate(kept)
        except ValueError:
            check = None
        if check is not None and check.expected == expected and check.engine == engine_name():
            return image.model_copy(update={"text_check": check})
    data = await asyncio.to_thread(archive.read_bytes, Archive.image_rel(image.sha256, image.mime))
    check = await check_image(data, expected)
    current = sidecar if isinstance(sidecar, dict) else image.model_dump(mode="json")
    current["text_check"] = check.model_dump(mode="json")
    await asyncio.to_thread(archive.write_json, rel, current)
    if not check.passed:
        get_run_logger().warning(
            "text check failed: expected %s, read %r (worst character error rate %.2f)",
            expected,
            check.read,
            check.error_rate,
        )
    return image.model_copy(update={"text_check": check})


async def check_rows(
    by_row: dict[int, list[ArchivedImage]], rows: list[Row], rule: TextRule, archive: Archive
) -> None:
    """A batch's images checked row by row, once they are all in (the Batch API's rows:
    flagged, not remade, since a remake would be another batch)."""
    if not rule.on:
        return
    for i, images in sorted(by_row.items()):
        if not images:
            continue
        wanted = rule.given(row_expected_text(rows[i])).expected_for(images[0].prompt)
        if wanted:
            by_row[i] = await check_all(images, wanted, archive)


def _passed(image: ArchivedImage) -> bool:
    return image.text_check is None or image.text_check.passed


def _shown(images: list[ArchivedImage]) -> list[str]:
    return [line for img in images if img.text_check for line in img.text_check.read][:6]


def text_failed(images: list[ArchivedImage]) -> int:
    """Images whose text check failed."""
    return sum(1 for img in images if img.text_check is not None and not img.text_check.passed)


async def checked_text_of(archive: Archive, sources: list[str]) -> list[str]:
    """The text the first archived source image was checked for (its sidecar's `text_check`):
    what an edit of it that quotes nothing itself is expected to keep."""
    for source in sources:
        rel = archive.rel_of(source)
        if not rel.startswith("images/"):
            continue
        sidecar = await asyncio.to_thread(archive.read_json, Archive.sidecar_rel(image_sha(rel)))
        kept = sidecar.get("text_check") if isinstance(sidecar, dict) else None
        if isinstance(kept, dict) and isinstance(kept.get("expected"), list):
            return [str(line) for line in kept["expected"]]
    return []


def text_failures(
    by_row: dict[int, list[ArchivedImage]], rows: list[Row], row_of: list[int]
) -> list[BatchFailure]:
    """Rows none of whose images passed their text check, as failed rows (fail_on_row_failure):
    their images stay archived and returned."""
    failed = []
    for i, images in sorted(by_row.items()):
        checks = [img.text_check for img in images if img.text_check is not None]
        if not checks or any(c.passed for c in checks):
            continue
        best = min(checks, key=lambda c: c.error_rate)
        failed.append(
            BatchFailure(
                index=row_of[i],
                prompt=images[0].prompt[:200],
                error=f"no image passed its text check: expected {best.expected}, read "
                f"{best.read[:6]} (character error rate {best.error_rate:.2f})",
                error_type="TextCheckFailed",
                extra=row_metadata(rows[i]),
            )
        )
    return failed


def failed_rows(images: list[ArchivedImage], rows: list[Row]) -> list[BatchFailure]:
    """`text_failures` of images that carry their input row (a gathered distributed batch)."""
    by_row: dict[int, list[ArchivedImage]] = {}
    for img in images:
        if img.row is not None:
            by_row.setdefault(img.row, []).append(img)
    return text_failures(by_row, rows, list(range(len(rows))))


def worth_editing(candidates: list[ArchivedImage]) -> list[ArchivedImage]:
    """The candidates a pipeline edits: those whose text passed (all when none was checked),
    else the one read best (its check stays failed, flagged), so no edit is paid for on a
    misspelt source when a right one exists."""
    checked_ones = [c for c in candidates if c.text_check is not None]
    if not checked_ones:
        return candidates
    passing = [c for c in candidates if _passed(c)]
    if passing:
        return passing
    best = min(checked_ones, key=lambda c: c.text_check.error_rate if c.text_check else 1.0)
    get_run_logger().warning(
        "no candidate's text passed its check: editing the one read best (%s), flagged",
        best.uri,
    )
    return [best]


async def edit_all(
    make: Callable[[list[ArchivedImage], str], Awaitable[list[ArchivedImage]]],
    sources: list[ArchivedImage],
    prompt: str,
    rule: TextRule,
    archive: Archive,
) -> list[ArchivedImage]:
    """A pipeline's edits of `sources`: made together (one Batch API batch) when nothing is
    checked; otherwise one source at a time, each checked for the edit prompt's quotes, else
    the text its source was checked for."""
    if not rule.on:
        return await make(sources, "")
    made: list[ArchivedImage] = []
    for source in sources:
        made += await checked(
            functools.partial(make, [source]),
            prompt,
            rule,
            archive,
            fallback=source.text_check.expected if source.text_check else None,
            size=(source.width, source.height),
        )
    return made
