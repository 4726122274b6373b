"""What a flow's `provider` and `archive` parameters name, resolved before anything is paid.

The archive is where job records live (what stops a re-run from paying again), so a flow run
of a deployment refuses a local archive that will not outlive it: a relative path (it lands in
the worker's working directory, which a process worker creates in the temporary directory and
deletes when the run ends), no archive at all (the same place), or a folder under the system's
temporary directory. Interactive runs (scripts, the CLI, notebooks) keep `./gptimg-archive`.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from gptimg_flows.archive.store import DEFAULT_ARCHIVE_ENV, Archive
from gptimg_flows.blocks.aws import (
    S3_BUCKET_PREFIX,
    S3Bucket,
    archive_of_bucket,
    is_s3_bucket,
    load_s3_bucket,
)
from gptimg_flows.blocks.credentials import (
    CREDENTIAL_BLOCKS,
    GptImage2AICredentials,
    ImageArchive,
    OpenAIImageCredentials,
    ProviderCredentials,
    ProviderSpec,
    RunwareCredentials,
    ScenarioCredentials,
    SkillsVideoCredentials,
)
from gptimg_flows.blocks.route import ProviderRoute, Route, RoutePolicy
from gptimg_flows.blocks.seller import Seller, member_name, seller_of
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.providers.offline import OFFLINE_NAMES

if TYPE_CHECKING:
    from prefect.client.schemas.objects import BlockDocument

OneProvider = (
    OpenAIImageCredentials
    | ScenarioCredentials
    | RunwareCredentials
    | SkillsVideoCredentials
    | GptImage2AICredentials
    | str
)
#: A flow's `provider`: one provider, a list of them (a route), or a ProviderRoute block.
ProviderParam = OneProvider | ProviderRoute | list[OneProvider]
if S3Bucket is not None:  # with the aws extra, a prefect-aws S3Bucket is an archive too
    ArchiveParam = ImageArchive | S3Bucket | str | None
else:
    ArchiveParam = ImageArchive | str | None  # type: ignore[misc,assignment]

_ARCHIVE_FIX = (
    "set the deployment's `archive` parameter to a saved ImageArchive block, an absolute "
    f"persistent path or an s3:// URL (or {DEFAULT_ARCHIVE_ENV} on the worker)"
)


async def resolve_provider(provider: ProviderParam) -> Seller | Route:
    """One provider (a block object, `"offline"`, a saved block's name, or
    `"<block-type-slug>/<name>"`), or a route: a list of those, a ProviderRoute block, or a
    saved one's name. A list of one is that one provider. Resolved once, here: each seller
    with its adapter, what the engine is handed."""
    spec = await _resolved(provider)
    return spec if isinstance(spec, Route) else seller_of(spec)


async def _resolved(provider: ProviderParam) -> ProviderSpec | Route:
    if isinstance(provider, ProviderRoute):
        saved = getattr(provider, "_block_document_name", None)
        return await _route(saved or "route", provider.providers, provider.policy(), saved)
    if isinstance(provider, list):
        if not provider:
            raise InvalidRequest("provider: an empty list names no provider", field="provider")
        if len(provider) == 1:
            return await _resolved(provider[0])
        shown = " → ".join(p if isinstance(p, str) else member_name(p, None) for p in provider)
        return await _route(shown, provider, RoutePolicy())
    return await _one_or_saved_route(provider)


async def _one_or_saved_route(provider: OneProvider) -> ProviderSpec | Route:
    if isinstance(provider, ProviderCredentials):
        return provider
    name = provider.strip()
    if name in OFFLINE_NAMES:
        return name
    if "/" in name:
        slug, _, block_name = name.partition("/")
        if slug == ProviderRoute.get_block_type_slug():
            return await _saved_route(block_name)
        for cls in CREDENTIAL_BLOCKS:
            if cls.get_block_type_slug() == slug:
                return await _load_block(cls, block_name, name)
        raise InvalidRequest(f"provider: unknown block type {slug!r}", field="provider")
    for cls in CREDENTIAL_BLOCKS:
        try:
            return await _load_block(cls, name, name)
        except UnusableBlock:
            raise
        except InvalidRequest:
            continue
    try:
        return await _saved_route(name)
    except InvalidRequest:
        pass
    if name in PROVIDER_NAMES:
        return await _by_provider_name(name)
    saved = await saved_provider_names()
    close = difflib.get_close_matches(name, saved + list(PROVIDER_NAMES), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listed = f"saved: {', '.join(saved)}" if saved else "none is saved"
    raise InvalidRequest(
        f"provider: no saved credentials block or route named {name!r} (nor is it 'offline'; "
        f"{listed}).{hint} Save one from your keys with `gptimg blocks create` (or "
        "ScenarioCredentials(...).save(name), blocks/from_env.py)",
        field="provider",
    )


def _unused(name: str, taken: set[str]) -> str:
    """`scenario#2`, `scenario#3`, …: two unsaved blocks of one provider in a route."""
    return next(f"{name}#{i}" for i in range(2, len(taken) + 3) if f"{name}#{i}" not in taken)


async def _saved_route(name: str) -> Route:
    try:
        block: ProviderRoute = await ProviderRoute.aload(name)
    except ValueError:
        raise InvalidRequest(f"provider: no route {name!r}", field="provider") from None
    if not isinstance(block, ProviderRoute):
        raise InvalidRequest(f"provider: {name!r} is not a route", field="provider")
    return await _route(name, list(block.providers), block.policy(), name)


async def _route(
    shown: str,
    given: list[OneProvider] | list[str],
    policy: RoutePolicy,
    saved: str | None = None,
) -> Route:
    """Each member resolved to one provider (a route inside a route is refused), under a name
    no other member has."""
    members: list[Seller] = []
    for item in given:
        spec = await _one_or_saved_route(item)
        if isinstance(spec, Route):
            raise InvalidRequest(
                f"provider: route {shown!r} lists {item!r}, which is a route itself; list its "
                "providers instead",
                field="provider",
            )
        name = member_name(spec, item.strip() if isinstance(item, str) else None)
        taken = {m.name for m in members}
        if name in taken:
            if isinstance(item, str):
                raise InvalidRequest(
                    f"provider: route {shown!r} lists {name!r} twice", field="provider"
                )
            name = _unused(name, taken)
        members.append(seller_of(spec, name))
    return Route(shown, tuple(members), policy, saved)


#: Our providers' names (what `provider_name` says on each credentials block).
PROVIDER_NAMES = tuple(cls.provider_name for cls in CREDENTIAL_BLOCKS)


async def saved_provider_names() -> list[str]:
    """The names of the saved credentials blocks (empty when no API answers: a hint only)."""
    slugs = {cls.get_block_type_slug() for cls in CREDENTIAL_BLOCKS}
    slugs.add(ProviderRoute.get_block_type_slug())
    docs = await _block_documents()
    return sorted(d.name for d in docs if d.name and d.block_type and d.block_type.slug in slugs)


async def _block_documents() -> list[BlockDocument]:
    """Every saved block document, secrets left out (none when no API answers: callers use
    them for hints and choices only, not worth a second error)."""
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            return await client.read_block_documents(include_secrets=False)
    except Exception:
        return []


async def _by_provider_name(name: str) -> ProviderSpec:
    """A provider's own name (`openai`) where no block has that name: the one saved block of
    that provider, else a block from the environment's key (OPENAI_API_KEY, …), never saved;
    several saved ones are listed to choose from."""
    from gptimg_flows.blocks.from_env import SOURCES

    cls = next(c for c in CREDENTIAL_BLOCKS if c.provider_name == name)
    saved = await _saved_of(cls)
    if len(saved) == 1:
        return await _load_block(cls, saved[0], saved[0])
    if len(saved) > 1:
        raise InvalidRequest(
            f"provider: {name!r} names no block, and {len(saved)} saved {name} blocks could be "
            f"meant ({', '.join(saved)}): pass one of their names",
            field="provider",
        )
    source = next(s for s in SOURCES if s.block is cls)
    values = {field: os.environ.get(var, "").strip() for field, var in source.secrets}
    if all(values.values()):
        return cls(**values, base_url=os.environ.get(source.base_url_var) or None)
    variables = " and ".join(var for _, var in source.secrets)
    raise InvalidRequest(
        f"provider: no saved {name} block, and {variables} is not set: set it, or save a block "
        f"from it with `gptimg blocks create` (or {cls.__name__}(...).save(name))",
        field="provider",
    )


async def _saved_of(cls: type[ProviderCredentials]) -> list[str]:
    """The names of the saved blocks of one credentials type."""
    slug = cls.get_block_type_slug()
    docs = await _block_documents()
    return sorted(
        d.name
        for d in docs
        if d.name and not d.is_anonymous and d.block_type and d.block_type.slug == slug
    )


def unkeyed_block(name: str) -> ProviderCredentials | None:
    """A provider's credentials block with no key, to price requests before a key is bought
    (`openai`, `scenario`, …): never saved, never used to call the provider. None if `name`
    is not one of our providers."""
    for cls in CREDENTIAL_BLOCKS:
        if cls.provider_name == name:
            return cls(**{field: "(no key: estimates only)" for field in cls.secret_fields})
    return None


async def _load_block(cls: type[ProviderCredentials], block_name: str, shown: str) -> ProviderSpec:
    try:
        block = await cls.aload(block_name)
    except RuntimeError as exc:  # saved, but fails the block's checks (a blank key from the UI)
        if "failed validation" not in str(exc):
            raise
        unusable = UnusableBlock(
            f"provider: the saved block {shown!r} cannot be used: "
            f"{_why_invalid(exc)}. Edit it in the Prefect UI (Blocks) or "
            "save it again",
            field="provider",
        )
        unusable.provider_name = cls.provider_name
        raise unusable from None
    except ValueError:
        raise InvalidRequest(f"provider: no block {shown!r}", field="provider") from None
    assert isinstance(block, ProviderCredentials)
    return block


class UnusableBlock(InvalidRequest):
    """A saved block that exists but fails its checks: said as it is, not as "no block"."""

    #: the provider the block is for: an estimate can still price at its documented prices
    provider_name: str | None = None


def _why_invalid(exc: RuntimeError) -> str:
    """What the block's checks said of a saved block that failed them (no secret in it)."""
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in cause.errors())
    return "it fails its checks"


def looks_like_path(text: str) -> bool:
    """A path or URL rather than a block name (block names have no `/`, `.` or `~` prefix)."""
    return "://" in text or "/" in text or os.sep in text or text.startswith((".", "~"))


async def resolve_archive(archive: ArchiveParam) -> Archive:
    """An ImageArchive block, a saved block's name, a path or fsspec URL, or None (default).

    Under a deployment, one that would not outlive the run is refused (module docstring).
    Whether it came from configuration (`Archive.configured`) is set here.
    """
    deployed = in_deployment_run()
    block_name: str | None = None  # the saved block the archive came from, if it did
    from_config = True  # a saved block or the default; False for what a parameter built
    if archive is None:
        configured = os.environ.get(DEFAULT_ARCHIVE_ENV)
        if deployed and not configured:
            raise InvalidRequest(
                "archive: not set, and a deployment's run would archive into the worker's "
                f"working directory ({os.getcwd()}), which a process worker deletes when the "
                f"run ends, taking the images and the job records with it; {_ARCHIVE_FIX}",
                field="archive",
            )
        store = Archive(configured) if configured else Archive()
        given = configured
    elif isinstance(archive, ImageArchive):
        store = await _archive_of_block(archive)
        given = store.basepath
        block_name = getattr(archive, "_block_document_name", None) or ""  # "": unsaved
        from_config = is_saved(archive)
    elif is_s3_bucket(archive):
        store = archive_of_bucket(archive)
        given = store.basepath
        from_config = is_saved(archive)
    elif not isinstance(archive, str):
        raise InvalidRequest(
            f"archive: a {type(archive).__name__} is not an archive; give an ImageArchive or "
            "prefect-aws S3Bucket block, a saved block's name, a path or an fsspec URL",
            field="archive",
        )
    else:
        text = archive.strip()
        if not text:
            raise InvalidRequest("archive: empty path or URL", field="archive")
        if text.startswith(S3_BUCKET_PREFIX):
            store = archive_of_bucket(await load_s3_bucket(text.removeprefix(S3_BUCKET_PREFIX)))
        elif looks_like_path(text):
            store = open_archive(text)
            from_config = is_worker_default(store)
        else:
            store = await _archive_of_name(text)
            block_name = text
        given = store.basepath if not looks_like_path(text) else text
    if deployed and given is not None:
        problem = vanishing_reason(store, given)
        if problem and block_name is not None:  # the parameter is right; the block's path is not
            raise InvalidRequest(
                f"archive: the ImageArchive block{f' {block_name!r}' if block_name else ''} "
                f"points at {store.basepath}: "
                f"{problem}; change the block's basepath to storage every worker shares (an "
                "absolute folder outside the temporary directory, or an s3:// URL)",
                field="archive",
            )
        if problem:
            raise InvalidRequest(f"archive: {problem}; {_ARCHIVE_FIX}", field="archive")
    await asyncio.to_thread(store.sweep_stale)
    store.configured = from_config
    return store


def is_saved(block: object) -> bool:
    """A block document saved under a name (loaded, or a `$ref` parameter Prefect loaded):
    configuration. Not one built from a parameter's values, nor an anonymous one."""
    named = bool(getattr(block, "_block_document_name", None))
    return named and not getattr(block, "_is_anonymous", False)


def is_worker_default(store: Archive) -> bool:
    """`store` is where the worker's `$GPTIMG_ARCHIVE` points, however a parameter named it."""
    default = os.environ.get(DEFAULT_ARCHIVE_ENV)
    if not default:
        return False
    try:
        configured = Archive(default)
    except (ValueError, ImportError):  # a broken default is resolve's to report, not ours
        return False
    return _location(configured) == _location(store)


def _location(store: Archive) -> tuple[str, str]:
    return store.protocol, os.path.realpath(store.root) if store.local else store.root


async def _archive_of_name(name: str) -> Archive:
    """A saved ImageArchive block, else (with the aws extra) a saved S3Bucket block."""
    try:
        block: ImageArchive = await ImageArchive.aload(name)
    except ValueError:
        pass
    else:
        return await _archive_of_block(block)
    if S3Bucket is not None:
        try:
            return archive_of_bucket(await S3Bucket.aload(name))
        except ValueError:
            pass
    raise InvalidRequest(
        f"archive: {name!r} is neither a saved ImageArchive "
        + ("or S3Bucket " if S3Bucket is not None else "")
        + f"block nor a path/URL (save one with ImageArchive(basepath='s3://bucket/prefix')"
        f".save({name!r}), or `gptimg blocks create --archive URL`, which saves one named "
        "'archive')",
        field="archive",
    )


async def _archive_of_block(block: ImageArchive) -> Archive:
    """An ImageArchive's store: its basepath, or the S3Bucket block it names."""
    if block.s3_bucket:
        bucket = await load_s3_bucket(block.s3_bucket)
        return archive_of_bucket(
            bucket,
            public_base_url=block.public_base_url,
            link_expiry_seconds=block.link_expiry_seconds,
            read_options=block.read_options(),
        )
    return _open(block.basepath, block.get_archive)


def open_archive(basepath: str) -> Archive:
    """An archive at a path or fsspec URL; an unknown protocol is `InvalidRequest`."""
    return _open(basepath, lambda: Archive(basepath))


def _open(basepath: str, make: Callable[[], Archive]) -> Archive:
    """Open the archive; an fsspec protocol nobody installed is bad input, named as such."""
    try:
        store = make()
    except (ValueError, ImportError) as exc:
        scheme = basepath.split("://", 1)[0] if "://" in basepath else basepath
        raise InvalidRequest(
            f"archive: cannot open {basepath!r} ({' '.join(str(exc).split())}); use a local "
            f"folder or an fsspec URL whose protocol is installed (s3:// comes with s3fs; "
            f"{scheme!r} is not known)",
            field="archive",
        ) from None
    return store


def vanishing_reason(store: Archive, given: str) -> str | None:
    """Why a deployment's local archive would not outlive its run, or None if it would."""
    if not store.local:
        return None
    raw = given.removeprefix("file://").removeprefix("local://")
    if not Path(raw).expanduser().is_absolute():
        return (
            f"{given!r} is a relative path, so it would be resolved against the worker's "
            f"working directory ({os.getcwd()}), which a process worker deletes when the run ends"
        )
    root = Path(store.root).resolve()
    temp = Path(tempfile.gettempdir()).resolve()
    if root == temp or temp in root.parents:
        return (
            f"{store.basepath} is under the temporary directory {temp}, which is cleared "
            "(a process worker's working directory is deleted when its run ends; /tmp at reboot)"
        )
    return None


def in_deployment_run() -> bool:
    """True inside a flow run created from a deployment (a worker, `serve`, or a schedule)."""
    from prefect.runtime import deployment

    try:
        return bool(deployment.id)
    except Exception:  # no run context, no API: not a deployment's run
        return False
