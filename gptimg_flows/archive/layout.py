"""Where everything lives under an archive's base path: every path rule, once. The layout is
public (scripts and other tools read it), so a rule changes here or nowhere.

    images/<sha[:2]>/<sha256>.<ext>   the image, named by its content
    images/<sha[:2]>/<sha256>.json    its sidecar (prompt, provider, job, cost, …)
    _thumbs/<sha[:2]>/<sha256>.webp   its preview for the Prefect UI
    _jobs/<key>.json                  the job record of one paid submit (resume after a crash)
    _results/<key>.json               what one request produced (the cache a re-run reads)
    _batches/<id>.json                an OpenAI Batch API batch (created once, polled on re-runs)
    _refreshes/<id>.json              one refresh of a run (its token: a re-run resumes it)
    _latest/<key>.json                the key a request's newest images are under (a refresh's)
    _staging/<key>/<n>.<ext>          inline outputs kept the moment they arrive
"""

from __future__ import annotations

import posixpath

from gptimg_flows.media.sniff import EXTENSIONS

#: Every sidecar, as a glob under the base path.
SIDECARS = "images/*/*.json"
#: Where inline outputs are staged, and what an output URL of a staged image contains.
STAGING_DIR = "_staging"
STAGING_MARK = f"/{STAGING_DIR}/"


def image_rel(sha256: str, mime: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.{EXTENSIONS.get(mime, 'bin')}"


def image_sha(path: str) -> str:
    """The sha256 an archived image's path or URI names (the inverse of `image_rel`)."""
    return posixpath.basename(path.replace("\\", "/")).split(".", 1)[0]


def sidecar_rel(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.json"


def thumb_rel(sha256: str) -> str:
    return f"_thumbs/{sha256[:2]}/{sha256}.webp"


def job_rel(key: str) -> str:
    """One paid submit's job record (also the Batch API's row records)."""
    return f"_jobs/{key}.json"


def result_rel(key: str) -> str:
    return f"_results/{key}.json"


def refresh_rel(identity: str) -> str:
    return f"_refreshes/{identity}.json"


def latest_rel(key: str) -> str:
    return f"_latest/{key}.json"


def batch_rel(record: str) -> str:
    return f"_batches/{record}.json"


def staging_dir(key: str) -> str:
    return f"{STAGING_DIR}/{key}"


def staging_rel(key: str, index: int, ext: str) -> str:
    return f"{staging_dir(key)}/{index}.{ext}"


def record_fix(rel: str) -> str:
    """What to do about a damaged record at `rel` (the advice a DamagedRecord carries)."""
    if rel.startswith("_jobs/"):
        return (
            "It records one paid submit: if no run is using this request, look the job up at "
            "the provider, then delete the file (a re-run then pays for a new job)"
        )
    if rel.startswith("_results/"):
        return (
            "It lists what one request produced: delete it, and a re-run finds the images "
            "again from their sidecars (nothing is paid again while they are archived)"
        )
    if rel.startswith("_batches/"):
        return (
            "It records an OpenAI batch: look the batch up in OpenAI's dashboard before "
            "deleting the file (a re-run then creates and pays for a new batch)"
        )
    return "Restore it from a copy or delete it"
