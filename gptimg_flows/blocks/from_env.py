"""Credentials blocks from the environment variables users already have.

A key lives in the shell (`OPENAI_API_KEY`, …) long before anyone opens the Prefect UI, so one
call turns those variables into saved blocks that flows load by name. Saving is idempotent: a
block whose values already match is not written again, so a second run changes nothing.

Variables read, per provider (the block is named after the provider, or `<prefix>-<provider>`):

| provider | key variable(s) | optional base URL variable |
|---|---|---|
| `openai` | `OPENAI_API_KEY` | `OPENAI_BASE_URL` |
| `scenario` | `SCENARIO_SDK_API_KEY` + `SCENARIO_SDK_API_SECRET` | `SCENARIO_SDK_BASE_URL` |
| `runware` | `RUNWARE_API_KEY` | `RUNWARE_BASE_URL` |
| `skillsvideo` | `SKILLS_VIDEO_API_KEY` | `SKILLS_VIDEO_BASE_URL` |
| `gptimage2ai` | `GPTIMAGE2_API_KEY` | `GPTIMAGE2_BASE_URL` |

Only the key(s) and `base_url` are managed here (an unset base URL variable means the provider's
own URL); other fields of an existing block (timeouts, concurrency and rate limits, model) are
kept, so settings made in the UI survive a re-run. Reports name blocks, block types and
variable names, never a value: base URLs may carry credentials too.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr, ValidationError

from gptimg_flows.blocks.aws import S3_BUCKET_PREFIX
from gptimg_flows.blocks.credentials import (
    GptImage2AICredentials,
    ImageArchive,
    OpenAIImageCredentials,
    ProviderCredentials,
    RunwareCredentials,
    ScenarioCredentials,
    SkillsVideoCredentials,
)
from gptimg_flows.blocks.resolve import open_archive, vanishing_reason
from gptimg_flows.errors import InvalidRequest

#: Name of the ImageArchive block `--archive` saves (`<prefix>-archive` with a prefix).
ARCHIVE_BLOCK = "archive"

Action = Literal["created", "updated", "replaced", "unchanged"]


class IncompleteEnvironment(InvalidRequest):
    """A provider's variables are only half there (a Scenario key without its secret)."""


@dataclass(frozen=True)
class EnvSource:
    """Which variables fill which fields of one provider's credentials block."""

    block: type[ProviderCredentials]
    secrets: tuple[tuple[str, str], ...]  # (field, VARIABLE)
    base_url_var: str

    @property
    def provider(self) -> str:
        return self.block.provider_name


SOURCES: tuple[EnvSource, ...] = (
    EnvSource(OpenAIImageCredentials, (("api_key", "OPENAI_API_KEY"),), "OPENAI_BASE_URL"),
    EnvSource(
        ScenarioCredentials,
        (("api_key", "SCENARIO_SDK_API_KEY"), ("api_secret", "SCENARIO_SDK_API_SECRET")),
        "SCENARIO_SDK_BASE_URL",
    ),
    EnvSource(RunwareCredentials, (("api_key", "RUNWARE_API_KEY"),), "RUNWARE_BASE_URL"),
    EnvSource(
        SkillsVideoCredentials, (("api_key", "SKILLS_VIDEO_API_KEY"),), "SKILLS_VIDEO_BASE_URL"
    ),
    EnvSource(GptImage2AICredentials, (("api_key", "GPTIMAGE2_API_KEY"),), "GPTIMAGE2_BASE_URL"),
)

#: Every variable whose value is a secret (what output must never show).
SECRET_VARIABLES: tuple[str, ...] = tuple(var for s in SOURCES for _, var in s.secrets)


@dataclass(frozen=True)
class PlannedBlock:
    """A block to save: its class, name, the managed field values, and where they came from."""

    block: type[Block]
    name: str
    values: dict[str, Any] = field(repr=False)  # holds secrets: never printed
    sources: tuple[str, ...]


@dataclass(frozen=True)
class SavedBlock:
    name: str
    block_type: str
    slug: str
    action: Action
    sources: tuple[str, ...]

    @property
    def ref(self) -> str:
        """`<block-type-slug>/<name>`: what `--provider` and `Block.load` also accept."""
        return f"{self.slug}/{self.name}"


@dataclass(frozen=True)
class Skipped:
    provider: str
    reason: str


@dataclass
class EnvReport:
    saved: list[SavedBlock]
    skipped: list[Skipped]
    destination: str
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable report: names, types and variable names only."""
        out = [f"Prefect API: {self.destination}"]
        names = [b.name for b in self.saved] + [s.provider for s in self.skipped]
        width = max((len(n) for n in names), default=0)
        for b in self.saved:
            origin = f"  from {', '.join(b.sources)}" if b.sources else ""
            out.append(f"{b.action:<9}  {b.name:<{width}}  {b.block_type} ({b.slug}){origin}")
        for s in self.skipped:
            out.append(f"{'skipped':<9}  {s.provider:<{width}}  {s.reason}")
        providers = [b for b in self.saved if b.slug != ImageArchive.get_block_type_slug()]
        archives = [b for b in self.saved if b.slug == ImageArchive.get_block_type_slug()]
        out.extend(f"warning: {w}" for w in self.warnings)
        if not self.saved:
            out.append("No block saved: none of the variables above is set.")
        elif providers:
            archive = f" --archive {archives[0].name}" if archives else ""
            out.append(f"Use: gptimg generate PROMPT --provider {providers[0].name}{archive}")
        return out


# -- planning (no server) -----------------------------------------------------------------------

_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def block_name(provider: str, prefix: str | None) -> str:
    return f"{prefix}-{provider}" if prefix else provider


def _check_prefix(prefix: str | None) -> str | None:
    if prefix is None or prefix == "":
        return None
    if not _NAME.match(prefix):
        raise InvalidRequest(
            f"prefix: {prefix!r} must be lowercase letters, digits and single dashes "
            "(Prefect block names allow nothing else)",
            field="prefix",
        )
    return prefix


def _env(environ: Mapping[str, str], var: str) -> str | None:
    value = environ.get(var, "").strip()
    return value or None


def _check_base_url(var: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # The value is not repeated: a proxy URL may carry a password.
        raise InvalidRequest(f"{var} must be an http(s) URL", field="base_url")
    return value


def archive_fields(archive: str) -> dict[str, Any]:
    """The ImageArchive `--archive` saves: `s3-bucket/NAME` names a prefect-aws S3Bucket block
    (its keys stay in it), anything else is the basepath."""
    text = archive.strip()
    if text.startswith(S3_BUCKET_PREFIX):
        name = text.removeprefix(S3_BUCKET_PREFIX)
        if not name:
            raise InvalidRequest("archive: s3-bucket/ names no block", field="archive")
        return {"s3_bucket": name}
    return {"basepath": archive_basepath(archive)}


def archive_basepath(archive: str) -> str:
    """A URL as given; a local path made absolute (a worker elsewhere cannot use `./out`)."""
    text = archive.strip()
    if not text:
        raise InvalidRequest("archive: empty path or URL", field="archive")
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def plan_from_env(
    environ: Mapping[str, str], *, prefix: str | None = None, archive: str | None = None
) -> tuple[list[PlannedBlock], list[Skipped]]:
    """What would be saved, checked completely before anything is written."""
    prefix = _check_prefix(prefix)
    planned: list[PlannedBlock] = []
    skipped: list[Skipped] = []
    for source in SOURCES:
        present = {var: _env(environ, var) for _, var in source.secrets}
        missing = [var for var, value in present.items() if value is None]
        if len(missing) == len(present):
            skipped.append(Skipped(source.provider, f"{' + '.join(present)} not set"))
            continue
        if missing:
            have = [var for var in present if var not in missing]
            raise IncompleteEnvironment(
                f"{source.provider}: {', '.join(have)} is set but {', '.join(missing)} is not; "
                f"set both (or neither) to save the {source.provider} block",
                field=missing[0],
            )
        values: dict[str, Any] = {f: present[var] for f, var in source.secrets}
        sources = list(present)
        base_url = _env(environ, source.base_url_var)
        values["base_url"] = (
            _check_base_url(source.base_url_var, base_url) if base_url is not None else None
        )
        if base_url is not None:
            sources.append(source.base_url_var)
        planned.append(
            PlannedBlock(source.block, block_name(source.provider, prefix), values, tuple(sources))
        )
    if archive is not None:
        planned.append(
            PlannedBlock(
                ImageArchive,
                block_name(ARCHIVE_BLOCK, prefix),
                archive_fields(archive),
                ("--archive",),
            )
        )
    return planned, skipped


# -- saving -------------------------------------------------------------------------------------


def _plain(block: Block) -> dict[str, Any]:
    """Field values with secrets revealed, for an in-memory equality check only."""
    out: dict[str, Any] = {}
    for name in type(block).model_fields:
        value = getattr(block, name)
        out[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return out


async def _existing(
    cls: type[Block], name: str, client: PrefectClient
) -> tuple[bool, Block | None]:
    """(exists, its current values as a block). A document that no longer validates exists
    but is not returned. Read through the client rather than `Block.aload`, which emits a
    "loaded" event for what is only a comparison."""
    try:
        doc = await client.read_block_document_by_name(
            name, cls.get_block_type_slug(), include_secrets=True
        )
    except ObjectNotFound:
        return False, None
    try:
        return True, cls.model_validate(doc.data)
    except ValueError:  # includes pydantic's ValidationError
        return True, None


def _build(cls: type[Block], name: str, values: dict[str, Any]) -> Block:
    try:
        return cls(**values)
    except ValidationError as exc:
        # Pydantic's message repeats the input, which may be a key: name the fields only.
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise InvalidRequest(f"{name}: invalid value for {fields}", field=fields) from None


async def save_planned(planned: Sequence[PlannedBlock], client: PrefectClient) -> list[SavedBlock]:
    saved: list[SavedBlock] = []
    for plan in planned:
        exists, current = await _existing(plan.block, plan.name, client)
        action: Action
        if current is not None:
            before = _plain(current)
            after = {**before, **plan.values}
            if after == before:
                action = "unchanged"
            else:
                action = "updated"
                await _build(plan.block, plan.name, after).asave(
                    plan.name, overwrite=True, client=client
                )
        else:
            action = "replaced" if exists else "created"
            await _build(plan.block, plan.name, plan.values).asave(
                plan.name, overwrite=True, client=client
            )
        saved.append(
            SavedBlock(
                name=plan.name,
                block_type=plan.block.get_block_type_name(),
                slug=plan.block.get_block_type_slug(),
                action=action,
                sources=plan.sources,
            )
        )
    return saved


def _destination() -> str:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    configured = PREFECT_API_URL.value()
    if not configured:
        return (
            f"the local database under {PREFECT_HOME.value()} (no PREFECT_API_URL: a temporary "
            "server was started; flows run the same way on this machine find the blocks)"
        )
    url = urlsplit(str(configured))
    netloc = url.hostname or ""
    if url.port:
        netloc += f":{url.port}"
    return urlunsplit((url.scheme, netloc, url.path, "", ""))  # never userinfo


async def save_blocks_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    prefix: str | None = None,
    archive: str | None = None,
) -> EnvReport:
    """Create or update a credentials block per provider whose variables are set (and an
    ImageArchive block when `archive` is given); the others are reported as skipped.

    Everything is checked before the first save, so a half-configured provider (a Scenario
    key without its secret) raises `IncompleteEnvironment` and nothing is written.
    """
    import os

    planned, skipped = plan_from_env(
        os.environ if environ is None else environ, prefix=prefix, archive=archive
    )
    async with get_client() as client:
        saved = await save_planned(planned, client)
        warnings = [w for p in planned if (w := archive_warning(p)) is not None]
        return EnvReport(
            saved=saved, skipped=skipped, destination=_destination(), warnings=warnings
        )


def archive_warning(planned: PlannedBlock) -> str | None:
    """Why an ImageArchive block being saved would be refused by a deployment's run (its
    images and job records would not outlive the run), said now rather than on the worker."""
    basepath = planned.values.get("basepath")
    if planned.block is not ImageArchive or not isinstance(basepath, str):
        return None
    problem = vanishing_reason(open_archive(basepath), basepath)
    if problem is None:
        return None
    return (
        f"the ImageArchive block {planned.name!r}: {problem}. Scripts may use it; a "
        "deployment's run will refuse it. Point it at storage every worker shares (an "
        "absolute folder outside the temporary directory, or an s3:// URL)"
    )


# -- the script ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python blocks/from_env.py [--archive URL] [--prefix NAME]`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="from_env.py",
        description="Save gptimg credentials blocks from OPENAI_API_KEY, SCENARIO_SDK_API_KEY "
        "+ SCENARIO_SDK_API_SECRET, RUNWARE_API_KEY, SKILLS_VIDEO_API_KEY and "
        "GPTIMAGE2_API_KEY (optional <VAR prefix>_BASE_URL overrides).",
    )
    parser.add_argument("--archive", help="also save an ImageArchive block for this folder/URL")
    parser.add_argument("--prefix", help="name blocks <prefix>-<provider> instead of <provider>")
    args = parser.parse_args(argv)
    try:
        report = asyncio.run(save_blocks_from_env(prefix=args.prefix, archive=args.archive))
    except InvalidRequest as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


__all__ = [
    "SECRET_VARIABLES",
    "SOURCES",
    "EnvReport",
    "EnvSource",
    "IncompleteEnvironment",
    "SavedBlock",
    "Skipped",
    "main",
    "plan_from_env",
    "save_blocks_from_env",
]
