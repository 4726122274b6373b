"""What a person sees of a run in the Prefect UI: the images themselves, not their hashes.

Each image is shown as an embedded thumbnail (`data:` URI: works for a local folder or a
private bucket, where the browser has no URL to open), with its prompt, provider, size and
cost, and a link where the archive can give one (a public/CDN base URL, or a presigned S3 URL
that says when it expires). An edit is shown beside its source. Artifacts are keyed (listed on
the UI's Artifacts page); a large batch is split into pages of at most PAGE_BYTES of markdown
each, so no single artifact grows past what the API and the UI handle comfortably.
"""

from __future__ import annotations

import asyncio
import html
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect.artifacts import acreate_markdown_artifact

from gptimg_flows.archive.layout import image_sha
from gptimg_flows.archive.store import Archive, Link
from gptimg_flows.archive.thumbnails import load_thumbnail, recent_thumbnail
from gptimg_flows.engine.pacing import run_traffic, traffic_text
from gptimg_flows.engine.route_health import MemberStats, run_id, stats_of
from gptimg_flows.models import ArchivedImage
from gptimg_flows.results import BatchFailure, ReviewRound, cost_summary

#: Markdown per artifact. Measured (bench/NOTES.md): the server takes far larger bodies, but the
#: UI re-renders the whole page's markdown; ~1 MB (about 100 thumbnails) stays quick.
PAGE_BYTES = 1_000_000
PAGE_ROWS = 100
#: Thumbnails made or read at once (each in a worker thread).
THUMB_WORKERS = 8


@dataclass(frozen=True)
class Shown:
    """One image ready to show: its preview, its link, and its source's preview (edits)."""

    image: ArchivedImage
    thumb: str | None
    link: Link | None
    source_thumb: str | None = None


#: Characters that would make a user's or a provider's text into markdown (a link, an image
#: that loads a tracker, code, emphasis, a heading): each is shown as itself, backslash-escaped.
#: `_`, `-` and `+` are left alone: inside a table cell they make nothing worse than italics,
#: and ids and SKUs (`job_7aa4…`, `S-12`) stay searchable as they are.
_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*[]()!#~|"})


def cell(text: str, limit: int = 160) -> str:
    """Text shown as itself inside a markdown table cell: no pipes, no newlines, no raw HTML,
    no markdown (prompts, metadata and errors come from users and providers), and no bare
    URL the renderer would turn into a link."""
    flat = " ".join(text.split())
    short = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    escaped = html.escape(short, quote=False).translate(_MARKDOWN)
    return escaped.replace("://", ":\\/\\/").replace("www.", "www\\.")


def code_cell(text: str, limit: int = 200) -> str:
    """Text inside a code span in a table cell (a path): shown literally, so only the span's
    own delimiter and the table's pipe are kept out."""
    flat = " ".join(text.split())
    short = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return "`" + short.replace("`", "'").replace("|", "\\|") + "`"


async def _thumb(archive: Archive, sha256: str, uri: str, gate: asyncio.Semaphore) -> str | None:
    if (recent := recent_thumbnail(archive, sha256)) is not None:
        return recent
    async with gate:
        try:
            return await asyncio.to_thread(load_thumbnail, archive, sha256, uri)
        except OSError:  # unreadable or not an image any more: shown as text
            return None


async def show(images: Sequence[ArchivedImage], archive: Archive) -> list[Shown]:
    """Previews and links for each image (and its first input's preview, for edits)."""

    gate = asyncio.Semaphore(THUMB_WORKERS)

    async def one(img: ArchivedImage) -> Shown:
        thumb = await _thumb(archive, img.sha256, img.uri, gate)
        parent = img.parents[0] if img.parents else None
        source = await _thumb(archive, image_sha(parent), parent, gate) if parent else None
        return Shown(img, thumb, archive.link(img.uri), source)

    return list(await asyncio.gather(*(one(i) for i in images)))


def picture(data_uri: str | None, alt: str) -> str:
    return f"![{cell(alt, 60)}]({data_uri})" if data_uri else f"*({cell(alt, 60)}: not readable)*"


def link_text(shown: Shown) -> str:
    """Last in its row and short: a local file is the word `file`, its full path the link's
    title (shown on hover; the sidecar and the result hold it too), so a long path never
    pushes the other columns off a laptop's screen."""
    img = shown.image
    if shown.link is None:
        if "://" in img.uri or not img.uri.startswith("/"):
            name = posixpath.basename(img.uri)
            return code_cell(name if len(name) <= 16 else f"{name[:6]}…{name[-8:]}")
        title = img.uri.replace('"', "'").replace("|", "\\|")
        return f'[file](<{Path(img.uri).as_uri()}> "{title}")'
    if shown.link.expires_at is None:
        return f"[open]({shown.link.url})"
    when = shown.link.expires_at.strftime("%Y-%m-%d %H:%M UTC")
    return f"[open]({shown.link.url}) (link expires {when})"


def cost_cell(img: ArchivedImage) -> str:
    if img.cost is None:
        return "-"
    text = f"{img.cost:g} {img.cost_unit}"
    return text + " (earlier; 0 this run)" if img.from_archive else text


def review_cell(img: ArchivedImage) -> str:
    if img.review is None:
        return ""
    mark = "✅ approved" if img.review.status == "approved" else "❌ rejected"
    return f"{mark}{' (timed out)' if img.review.timed_out else ''}"


#: Short columns first, the prompt (which wraps) after them, the link last: at a 1366 px
#: window every column is on screen (checked in Chromium by tests/test_browser.py).
HEADER = (  # `#` is the gallery's picking number (what the review form takes), not a row
    "| # | from | image | provider | size | cost | review | prompt | link |\n"
    "|---|---|---|---|---|---|---|---|---|"
)
#: With a text check in the run: its column after `review`.
HEADER_TEXT = (
    "| # | from | image | provider | size | cost | review | text | prompt | link |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def row(number: int | str, shown: Shown, text: bool = False) -> str:
    img = shown.image
    source = picture(shown.source_thumb, "source") if img.parents else ""
    arrow = "→ " if img.parents else ""  # between the source and the edit, not under one
    label = f"row {img.row}" if img.row is not None else f"image {number}"
    extra = "".join(f"<br>{cell(f'{k}={v}', 60)}" for k, v in sorted(img.extra.items()))
    extra = "" if img.parents else extra  # an edit's extra is its lineage, shown as `from`
    return (
        f"| {number} | {source} | {arrow}{picture(shown.thumb, label)} | {provider_cell(img)} "
        f"| {img.width}x{img.height} | {cost_cell(img)} | {review_cell(img)} "
        + (f"| {text_cell(img)} " if text else "")
        + f"| {cell(img.prompt, 400)}{extra} | {link_text(shown)} |"
    )


def text_cell(img: ArchivedImage) -> str:
    """The text check: passed, or failed with what was expected and what was read (escaped:
    OCR reads whatever the image says)."""
    check = img.text_check
    if check is None:
        return ""
    if check.passed:
        return "✓ " + cell(" / ".join(check.expected), 80)
    read = " / ".join(check.read) or "(nothing)"
    return (
        f"**✗ text** (error rate {check.error_rate:.2f})<br>expected: "
        f"{cell(' / '.join(check.expected), 80)}<br>read: {cell(read, 120)}"
    )


def provider_cell(img: ArchivedImage) -> str:
    """The provider, and the route member (the saved block) that made the image, if routed."""
    if img.member and img.member != img.provider:
        return f"{cell(img.member, 40)}<br>{cell(img.provider)}"
    return cell(img.provider)


def route_table(stats: dict[str, MemberStats]) -> str:
    """A routed run's part per member: what each made and cost, and why work moved."""
    if not stats:
        return ""
    lines = [
        "| member | images | from archive | failovers | spilled | cooldowns | cost | USD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sorted(stats.items()):
        cost = ", ".join(f"{v:g} {u}" for u, v in sorted(s.cost.items())) or "-"
        usd = "-" if s.usd is None or not s.cost else f"{s.usd:g}"
        lines.append(
            f"| {cell(name, 60)} | {s.images} | {s.from_archive} | {s.failovers} | {s.spills} "
            f"| {s.cooldowns} | {cost} | {usd} |"
        )
    return "\n".join(lines)


def failure_table(failures: Sequence[BatchFailure], limit: int = 500) -> str:
    lines = [
        f"### Failures ({len(failures)})",
        "",
        "| row | prompt | job | error |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {f.index} | {cell(f.prompt, 80)} | {cell(f.job_id or '-')} "
        f"| {cell(f.error_type)}: {cell(f.error, 200)} |"
        for f in failures[:limit]
    ]
    if len(failures) > limit:
        lines.append(f"\n…and {len(failures) - limit} more (see the flow's result)")
    return "\n".join(lines)


def paginate(rows: list[str], first_overhead: int) -> list[list[str]]:
    """Rows packed into pages of at most PAGE_ROWS rows and PAGE_BYTES bytes (one row, however
    large, always gets a page)."""
    pages: list[list[str]] = [[]]
    size = first_overhead
    for line in rows:
        grow = len(line.encode()) + 1
        if pages[-1] and (size + grow > PAGE_BYTES or len(pages[-1]) >= PAGE_ROWS):
            pages.append([])
            size = 0
        pages[-1].append(line)
        size += grow
    return pages


async def publish_images(
    images: list[ArchivedImage],
    archive: Archive,
    title: str,
    key: str,
    failures: Sequence[BatchFailure] = (),
) -> list[str]:
    """The run's images as keyed markdown artifacts (one, or pages `key`, `key-page-2`, …).

    Returns the markdown of each page (what the UI renders)."""
    shown = await show(images, archive)
    text = any(img.text_check is not None for img in images)  # its column only when checked
    rows = [row(i + 1, s, text) for i, s in enumerate(shown)]
    summary = f"{cost_summary(images)}\n\n"
    if traffic := traffic_text(run_traffic()):
        summary += f"{traffic}\n\n"
    if routes := route_table(stats_of(run_id())):
        summary += f"{routes}\n\n"
    tail = f"\n\n{failure_table(failures)}" if failures else ""
    pages = paginate(rows, len((summary + tail).encode()) + 200)
    bodies: list[str] = []
    for n, page in enumerate(pages, start=1):
        of = f" (page {n} of {len(pages)})" if len(pages) > 1 else ""
        head = HEADER_TEXT if text else HEADER
        table = (head + "\n" + "\n".join(page)) if page else "*No images.*"
        body = f"## {cell(title, 300)}{of}\n\n" + (summary if n == 1 else "") + table
        body += tail if n == 1 else ""
        page_key = key if n == 1 else f"{key}-page-{n}"
        await acreate_markdown_artifact(markdown=body, key=page_key, description=f"{title}{of}")
        bodies.append(body)
    return bodies


def review_form_markdown(
    shown: Sequence[Shown],
    prompt: str,
    round_no: int,
    max_rounds: int,
    problem: str = "",
    total: int = 0,
) -> str:
    """What the Resume form shows above its fields: the candidates, numbered from 1."""
    lines = [
        f"### Review round {round_no} of at most {max_rounds}",
        "",
        f"**Prompt:** {cell(prompt, 400)}",
        "",
    ]
    if problem:
        lines += [f"**Your last answer could not be used:** {cell(problem, 300)}", ""]
    if total > len(shown):
        lines += [
            f"The first {len(shown)} of {total} candidates are shown; all of them are in "
            "the run's gallery artifacts, numbered the same way.",
            "",
        ]
    text = any(s.image.text_check is not None for s in shown)
    lines += (
        ["| # | candidate | size | cost | text |", "|---|---|---|---|---|"]
        if text
        else ["| # | candidate | size | cost |", "|---|---|---|---|"]
    )
    for n, s in enumerate(shown, start=1):
        img = s.image
        lines.append(
            f"| **{n}** | {picture(s.thumb, f'candidate {n}')} | {img.width}x{img.height} "
            f"| {cost_cell(img)} |" + (f" {text_cell(img)} |" if text else "")
        )
    lines += [
        "",
        "**approved**: the numbers to keep (empty rejects all). **new_prompt**: make a new "
        "round from this prompt instead. **note**: recorded with the decision.",
    ]
    return "\n".join(lines)


async def publish_review(
    rounds: Sequence[ReviewRound], shown_by_round: Sequence[Sequence[Shown]], key: str
) -> str:
    """One artifact recording each round's candidates and decision."""
    parts = ["## Review", ""]
    text = any(s.image.text_check is not None for shown in shown_by_round for s in shown)
    for rnd, shown in zip(rounds, shown_by_round, strict=True):
        decided = rnd.decided_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        who = "timed out: nobody answered" if rnd.timed_out else "answered"
        kept = ", ".join(str(n) for n in rnd.approved) or "none"
        parts += [
            f"### Round {rnd.round}: {cell(rnd.prompt, 200)}",
            "",
            f"Approved: **{kept}** of {rnd.candidates} · {who} at {decided}"
            + (f" · new prompt: {cell(rnd.new_prompt, 200)}" if rnd.new_prompt else "")
            + (f" · note: {cell(rnd.note, 300)}" if rnd.note else ""),
            "",
            "| # | candidate | decision |" + (" text |" if text else ""),
            "|---|---|---|" + ("---|" if text else ""),
        ]
        for n, s in enumerate(shown, start=1):
            parts.append(
                f"| {n} | {picture(s.thumb, f'candidate {n}')} | {review_cell(s.image)} |"
                + (f" {text_cell(s.image)} |" if text else "")
            )
        parts.append("")
    body = "\n".join(parts)
    await acreate_markdown_artifact(markdown=body, key=key, description="review decisions")
    return body
