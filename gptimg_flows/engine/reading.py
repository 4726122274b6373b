"""Which read rules a run is held to (`media.reads` holds the rules themselves).

A user's own process may read any local regular file it names. A deployment's flow run is
different: its parameters are set by whoever may run deployments, not only by whoever owns the
worker, so a run's parameters never widen what it may read. It reads local files only under
`GPTIMG_READ_ROOTS` and the folder of an archive that came from configuration (a saved block,
the worker's `GPTIMG_ARCHIVE`), and reads stores with that archive's options only: an archive
named in a parameter (a path, a URL, an unsaved block's values) is written to, not read from.
"""

from __future__ import annotations

import os

from gptimg_flows.archive.store import Archive
from gptimg_flows.blocks.resolve import in_deployment_run
from gptimg_flows.media.reads import ReadRules, roots_from_env, trusted_host_of


def read_rules(archive: Archive | None, *, provider_base_url: str | None = None) -> ReadRules:
    """The rules for this run: local roots in a deployment's run, the archive's options for
    its own store, and the provider's host trusted for what the provider names."""
    deployed = in_deployment_run()
    trusted = archive if archive is not None and (archive.configured or not deployed) else None
    roots: tuple[str, ...] | None = None
    if deployed:
        roots = roots_from_env()
        if trusted is not None and trusted.local:
            roots += (os.path.realpath(trusted.root),)
    return ReadRules(
        roots=roots,
        trusted_hosts=trusted_host_of(provider_base_url),
        storage_options=_store_options(trusted),
        options_from=f"the archive {trusted.basepath}" if trusted is not None else "nobody",
    )


def _store_options(archive: Archive | None) -> dict[str, dict[str, object]]:
    """protocol → options: other stores as the archive block says, its own with its own."""
    if archive is None:
        return {}
    options: dict[str, dict[str, object]] = dict(archive.read_options)
    if not archive.local:
        options[archive.protocol] = dict(archive.storage_options)
    return options
