"""Where images are kept (store: any fsspec URL, written once, content-addressed) and their
previews (thumbnails). No Prefect. `gptimg_flows.archive.Archive` is public."""

from gptimg_flows.archive.store import (
    DEFAULT_ARCHIVE_DIR,
    DEFAULT_ARCHIVE_ENV,
    LINK_EXPIRY_SECONDS,
    Archive,
    Link,
    default_basepath,
)

__all__ = [
    "DEFAULT_ARCHIVE_DIR",
    "DEFAULT_ARCHIVE_ENV",
    "LINK_EXPIRY_SECONDS",
    "Archive",
    "Link",
    "default_basepath",
]
