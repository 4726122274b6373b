"""Which read rules a run is held to (`media.reads` holds the rules themselves).

A user's own process may read any local regular file it names. A deployment's flow run is
different: its parameters are set by whoever may run deployments, not only by whoever owns the
worker, so it reads local files only under the archive (a local one) and `GPTIMG_READ_ROOTS`.
Either way the archive's store is read with the archive's storage options.
"""

from __future__ import annotations

import os

from gptimg_flows.archive.store import Archive
from gptimg_flows.blocks.resolve import in_deployment_run
from gptimg_flows.media.reads import ReadRules, roots_from_env, trusted_host_of


def read_rules(archive: Archive | None, *, provider_base_url: str | None = None) -> ReadRules:
    """The rules for this run: local roots in a deployment's run, the archive's options for
    its own store, and the provider's host trusted for what the provider names."""
    roots: tuple[str, ...] | None = None
    if in_deployment_run():
        roots = roots_from_env()
        if archive is not None and archive.local:
            roots += (os.path.realpath(archive.basepath),)
    options: dict[str, dict[str, object]] = {}
    if archive is not None:
        options.update(archive.read_options)  # other stores, as the archive block says
        if not archive.local:
            options[archive.protocol] = dict(archive.storage_options)
    return ReadRules(
        roots=roots,
        trusted_hosts=trusted_host_of(provider_base_url),
        storage_options=options,
        options_from=f"the archive {archive.basepath}" if archive is not None else "nobody",
    )
