"""A batch's rows: read from a list or a prompt file, then split into request and metadata.

Teams keep a SKU, a campaign or an id next to each prompt and need it on the image: every
column that is not a request field travels with the row (`ArchivedImage.extra`, the sidecar)
and is never sent to a provider. A column that looks like a misspelt request field is refused
rather than carried, so a typo never silently drops a setting. No Prefect here.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import string
from collections.abc import Callable, Sequence
from typing import Any

from gptimg_flows.errors import InvalidRequest, ProviderError
from gptimg_flows.models import ArchivedImage, ImageRequest, build_request, canonical_json
from gptimg_flows.results import BatchFailure

#: Columns that make the request; everything else is the row's metadata.
REQUEST_FIELDS = frozenset(ImageRequest.model_fields)
#: Batch-wide defaults a row may override.
Defaults = dict[str, Any]

Row = dict[str, Any]
PromptsParam = list[str | dict[str, Any]] | str


#: What a prompt file's name must end with, and the format that says.
PROMPT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "text"}


def rows_of_list(source: list[str | dict[str, Any]]) -> list[Row]:
    """Rows from a list of prompts or of dicts (a flow's `prompts=[…]`)."""
    rows: list[Row] = []
    for i, item in enumerate(source):
        if isinstance(item, dict):
            rows.append(dict(item))
        elif isinstance(item, str):
            rows.append({"prompt": item})
        else:
            raise InvalidRequest(
                f"prompts[{i}]: a prompt (string) or a row (dict), not {type(item).__name__}",
                field="prompts",
            )
    return rows


def prompt_format(source: str) -> str:
    """The format a prompt file's name says (jsonl, csv or text); any other name is refused
    rather than guessed, so a file never read as prompts is never read at all."""
    path = source.split("?", 1)[0].lower()
    for suffix, kind in PROMPT_FORMATS.items():
        if path.endswith(suffix):
            return kind
    raise InvalidRequest(
        f"prompts: {source}: a prompt file's name ends with "
        f"{', '.join(PROMPT_FORMATS)} (its format)",
        field="prompts",
    )


def rows_of_text(source: str, text: str) -> list[Row]:
    """Rows from a prompt file's text: JSONL lines and CSV rows carry request fields
    (`prompt`, `n`, `size`, …) and any metadata columns; a text file is a prompt a line."""
    kind = prompt_format(source)
    if kind == "jsonl":
        return _jsonl_rows(source, text)
    if kind == "csv":
        return [dict(r) for r in csv.DictReader(io.StringIO(text))]
    return [{"prompt": line} for line in text.splitlines() if line.strip()]


def _jsonl_rows(source: str, text: str) -> list[Row]:
    rows: list[Row] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"prompts: {source}:{lineno} is not JSON ({exc.msg})", field="prompts"
            ) from None
        rows.append(value if isinstance(value, dict) else {"prompt": str(value)})
    return rows


def check_columns(rows: list[Row], template: str | None) -> None:
    """Refuse, before anything is paid, a column that looks like a misspelt request field
    and a template placeholder that no row has."""
    columns: set[str] = set().union(*(r.keys() for r in rows)) if rows else set()
    for column in sorted(columns - REQUEST_FIELDS):
        close = difflib.get_close_matches(column.lower(), sorted(REQUEST_FIELDS), n=1, cutoff=0.8)
        if close and column.lower() != close[0]:
            raise InvalidRequest(
                f"prompts: column {column!r} is not a request field; did you mean {close[0]!r}? "
                "(columns that are not request fields are kept as the row's metadata)",
                field=column,
            )
    if template is not None:
        for name in template_fields(template):
            if rows and not any(name in r for r in rows):
                raise InvalidRequest(
                    f"prompt_template: no row has a column {name!r} "
                    f"(columns: {', '.join(sorted(columns)) or 'none'})",
                    field="prompt_template",
                )


def template_fields(template: str) -> list[str]:
    """The column names a template uses: `{name}` only. A format spec or conversion
    (`{name:>400000000}`, `{name!r}`) is refused: a width builds a string of any size before
    any other check, and a prompt needs none."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidRequest(f"prompt_template: {exc}", field="prompt_template") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise InvalidRequest(
                f"prompt_template: use named columns like {{name}}, not {{{name}}}",
                field="prompt_template",
            )
        if spec or conversion:
            raise InvalidRequest(
                f"prompt_template: {{{name}}} takes no format spec or conversion; write the "
                "column as you want it to read",
                field="prompt_template",
            )
        names.append(name)
    return names


def row_request(row: Row, defaults: Defaults, template: str | None) -> ImageRequest:
    """The request one row makes: the batch's defaults, then the row's own request fields
    (empty CSV cells mean "the default"), the prompt filled from the template if there is one."""
    fields: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
    fields.update(
        {
            k: v
            for k, v in row.items()
            if k in REQUEST_FIELDS and k != "prompt" and v not in (None, "")
        }
    )
    if template is not None:
        fields["prompt"] = fill_row_template(template, row)
    elif "prompt" in row:
        fields["prompt"] = "" if row["prompt"] is None else str(row["prompt"])
    else:
        columns = ", ".join(sorted(row)) or "none"
        raise InvalidRequest(
            f"prompt: the row has no `prompt` column (columns: {columns}); add one or pass "
            "prompt_template",
            field="prompt",
        )
    return build_request(ImageRequest, **fields)


def fill_row_template(template: str, row: Row) -> str:
    missing = [n for n in template_fields(template) if n not in row]
    if missing:
        raise InvalidRequest(
            f"prompt_template: the row has no column {missing[0]!r} "
            f"(columns: {', '.join(sorted(row)) or 'none'})",
            field="prompt_template",
        )
    values = {k: "" if v is None else v for k, v in row.items()}
    try:
        return template.format(**values)
    except (ValueError, IndexError, KeyError) as exc:
        raise InvalidRequest(f"prompt_template: {exc}", field="prompt_template") from None


#: Row columns that steer the run without being sent or kept as metadata.
CHECK_FIELDS = frozenset({"expected_text"})


def row_metadata(row: Row) -> dict[str, Any]:
    """The row's columns that are not request fields: carried with its images, never sent."""
    return {k: v for k, v in row.items() if k not in REQUEST_FIELDS and k not in CHECK_FIELDS}


def row_expected_text(row: Row) -> list[str] | None:
    """A row's own `expected_text`: a list (JSONL), or one line (CSV; " | " parts several)."""
    value = row.get("expected_text")
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    return [part.strip() for part in str(value).split(" | ")]


def row_prompt(row: Row) -> str:
    value = row.get("prompt")
    return "" if value is None else str(value)


def occurrence_slots(requests: Sequence[ImageRequest | None]) -> list[str]:
    """Each request's slot: its occurrence number among identical requests (None: ""), so
    re-running an edited prompt file only pays for lines that are new, and a duplicate line is
    a new image. batch_generate and distributed_batch must agree on it, or a chunk reads
    another row's result."""
    seen: dict[str, int] = {}
    slots: list[str] = []
    for request in requests:
        if request is None:
            slots.append("")
            continue
        fingerprint = canonical_json(request.fingerprint())
        slots.append(str(seen.get(fingerprint, 0)))
        seen[fingerprint] = seen.get(fingerprint, 0) + 1
    return slots


def row_failure(index: int, row: Row, prompt: str, exc: BaseException) -> BatchFailure:
    return BatchFailure(
        index=index,
        prompt=prompt[:200],
        error=str(exc),
        error_type=type(exc).__name__,
        job_id=getattr(exc, "job_id", None),
        extra=row_metadata(row),
    )


def on_row(images: list[ArchivedImage], index: int, extra: dict[str, Any]) -> list[ArchivedImage]:
    """This run's row and metadata on each image (an image answered from the archive carries
    those of the run that paid for it in its sidecar)."""
    return [
        i.model_copy(update={"row": index, "extra": _in_file_order(extra, i.extra)}) for i in images
    ]


def _in_file_order(extra: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
    """This run's columns, in the file's order, then any others the image kept (a sidecar
    read back holds its keys sorted: a re-run printed them alphabetically)."""
    return {**extra, **{k: v for k, v in kept.items() if k not in extra}}


def plan_rows(
    rows: Sequence[Row],
    defaults: dict[str, Any],
    template: str | None,
    validate: Callable[[ImageRequest], object],
) -> tuple[list[ImageRequest | None], list[BatchFailure]]:
    """Each row's request, checked by `validate` (the provider's rules) before anything is
    paid: a row that cannot be made is a failure of its own (None in its place), the others
    go on. Every batch (batch_generate, its review rounds, distributed_batch, estimates)
    plans its rows here."""
    requests: list[ImageRequest | None] = []
    failures: list[BatchFailure] = []
    for i, row in enumerate(rows):
        request: ImageRequest | None = None
        try:
            request = row_request(row, defaults, template)
            validate(request)
            requests.append(request)
        except (ValueError, ProviderError) as exc:
            requests.append(None)
            # the prompt as it would have been sent: a templated row's filled template
            shown = request.prompt if request is not None else _shown_prompt(row, template)
            failures.append(row_failure(i, row, shown, exc))
    return requests, failures


def _shown_prompt(row: Row, template: str | None) -> str:
    """A failed row's prompt for the failures table: its template filled where it can be."""
    if template is not None:
        try:
            return template.format_map({k: "" if v is None else v for k, v in row.items()})
        except (KeyError, IndexError, ValueError):
            pass
    return row_prompt(row)
