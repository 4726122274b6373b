"""A `prefect deploy` build step (deployments/prefect.yaml) that looks at the archive block the
deployments name, so an archive a deployment's run would refuse (a folder under the temporary
directory, that a process worker's run would lose) is said at deploy time, naming the block and
the fix, instead of as a Failed run on the worker the next morning. It never stops a deploy."""

from __future__ import annotations

from gptimg_flows.blocks.credentials import ImageArchive
from gptimg_flows.blocks.resolve import open_archive, vanishing_reason


async def check_archive_block(archive: str) -> dict[str, str]:
    """Prefect runs this at `prefect deploy`; what it prints is shown there. Returns the
    finding as the step's output (`archive_check`)."""
    try:
        block: ImageArchive = await ImageArchive.aload(archive)
    except ValueError:
        message = (
            f"note: no ImageArchive block named {archive!r} is saved yet; save one before the "
            f"first run (gptimg blocks create --archive URL, with --prefix for '{archive}')"
        )
    else:
        problem = None
        if not block.s3_bucket:
            problem = vanishing_reason(open_archive(block.basepath), block.basepath)
        message = (
            f"warning: the ImageArchive block {archive!r}: {problem}. A deployment's run will "
            "refuse it before paying; point the block at storage every worker shares (an "
            "absolute folder outside the temporary directory, or an s3:// URL)"
            if problem
            else f"archive block {archive!r}: {block.s3_bucket or block.basepath}"
        )
    print(message)
    return {"archive_check": message}
