"""The archive never shows half an image: readers see nothing, or all of it (local and S3)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gptimg_flows.archive.store import S3_PART_BYTES, Archive

SIZE = 3 * S3_PART_BYTES + 123  # several multipart parts on S3


def _watch(
    archive: Archive, rel: str, stop: threading.Event, seen: list[int], polls: list[int]
) -> None:
    """Read the object's size as often as possible while it is being written."""
    target = archive.path(rel)
    while not stop.is_set():
        polls[0] += 1
        try:
            if archive.fs.exists(target):
                seen.append(int(archive.fs.info(target)["size"]))
        except FileNotFoundError:
            pass
        archive.fs.invalidate_cache()


def _write_while_watched(archive: Archive, source: Path, rel: str) -> list[int]:
    stop, seen, polls = threading.Event(), [], [0]
    watcher = threading.Thread(target=_watch, args=(archive, rel, stop, seen, polls))
    watcher.start()
    try:
        while polls[0] < 1:  # the reader is looking before the write starts
            time.sleep(0.001)
        archive.put_file(str(source), rel, mime="image/png")
        during = polls[0]
        deadline = time.monotonic() + 10
        while SIZE not in seen and time.monotonic() < deadline:  # and it does see the end
            time.sleep(0.01)
    finally:
        stop.set()
        watcher.join()
    assert during > 1, "the reader did not look while the image was written"
    assert SIZE in seen, "the reader never saw the finished image"
    return seen


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.png"
    path.write_bytes(os.urandom(SIZE))
    return path


def _slow_local_put(fs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Write in 1 MiB pieces with a pause between them, like a slow disk: on a busy machine
    a 15 MB write to the page cache can end before the reader thread is scheduled again."""

    def put_file(lpath: str, rpath: str, **kwargs: Any) -> None:
        with open(lpath, "rb") as src, open(rpath, "wb") as dst:
            while chunk := src.read(2**20):
                dst.write(chunk)
                dst.flush()
                time.sleep(0.005)

    monkeypatch.setattr(fs, "put_file", put_file)  # fsspec's local fs is shared: undone after


def test_a_local_reader_sees_the_whole_image_or_nothing(
    big_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = Archive(str(tmp_path / "archive"))
    _slow_local_put(archive.fs, monkeypatch)
    for i in range(5):
        seen = _write_while_watched(archive, big_file, f"images/ab/{i}.png")
        assert set(seen) <= {SIZE}, f"a reader saw a partial image: {sorted(set(seen))[:5]}…"
    assert not [p for p in (tmp_path / "archive").rglob("*") if p.name.endswith(".tmp")]


def test_an_s3_reader_sees_the_whole_image_or_nothing(
    big_file: Path, s3_archive: tuple[str, dict[str, Any]]
) -> None:
    archive = Archive(*s3_archive)
    seen = _write_while_watched(archive, big_file, "images/ab/big.png")
    assert set(seen) <= {SIZE}, f"a reader saw a partial object: {sorted(set(seen))[:5]}…"
    assert archive.read_bytes("images/ab/big.png") == big_file.read_bytes()


def test_a_local_write_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path / "archive"))
    target = archive.path("images/cd/broken.png")

    def write_half_then_fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"\x89PNG half an image")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        archive._atomic(target, write_half_then_fail)
    assert [p for p in (tmp_path / "archive").rglob("*") if p.is_file()] == []
