"""The embedded OCR engine: RapidOCR (PP-OCR models inside its wheel, run by onnxruntime), from
the optional extra `gptimg-flows[ocr]`. Loaded once per process, on first use; every read runs
in a thread pool sized to the cores (onnxruntime works outside the GIL), so a batch's submits
and polls never wait on OCR; the engine itself reads one image at a time (its onnxruntime
sessions already use every core, and the pipeline is not documented as thread-safe), while the
pool decodes and scales the next. Large images are scaled down for reading."""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from importlib.util import find_spec
from typing import Any

from PIL import Image

from gptimg_flows.errors import InvalidRequest

#: Longest side an image is read at: PP-OCR's detector works at about this size anyway, and a
#: 4K image read whole costs seconds for nothing.
MAX_SIDE = 2048
INSTALL = "pip install 'gptimg-flows[ocr]'"


class OCRMissing(InvalidRequest):
    """A text check was asked for, but the OCR extra is not installed: refused before paying."""


def require_ocr() -> None:
    """Refuse a text check before anything is paid when the engine cannot be loaded."""
    missing = [name for name in ("rapidocr", "onnxruntime") if find_spec(name) is None]
    if missing:
        raise OCRMissing(
            f"text_check needs the OCR extra, which is not installed ({', '.join(missing)} "
            f"missing): {INSTALL}",
            field="text_check",
        )


@functools.cache
def engine_name() -> str:
    """The engine and its version, as each check records them."""
    try:
        ocr, runtime = metadata.version("rapidocr"), metadata.version("onnxruntime")
        return f"rapidocr {ocr} (onnxruntime {runtime})"
    except metadata.PackageNotFoundError:
        return "rapidocr (not installed)"


_LOCK = threading.Lock()
_READING = threading.Lock()
_ENGINE: Any = None
_POOL: ThreadPoolExecutor | None = None


def _engine() -> Any:
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            require_ocr()
            from rapidocr import RapidOCR

            logging.getLogger("RapidOCR").setLevel(logging.WARNING)
            _ENGINE = RapidOCR(
                params={
                    "Global.log_level": "warning",
                    "EngineConfig.onnxruntime.intra_op_num_threads": _cores(),
                }
            )
        return _ENGINE


def _cores() -> int:
    """The cores this process may run on (a worker pinned to one core reads on one thread,
    not on as many as the machine has)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="gptimg-ocr")
        return _POOL


def read_lines(data: bytes, scale: float = 1.0) -> list[str]:
    """The text lines the engine reads in an image (top to bottom), blocking; `scale` reads
    it larger or smaller (a second reading: OCR's slips change with scale, a misspelling
    drawn in the image does not)."""
    import numpy as np

    with Image.open(io.BytesIO(data)) as opened:
        img = opened.convert("RGB")
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    if scale != 1.0:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    engine = _engine()
    with _READING:  # one read at a time: onnxruntime already spreads one over the cores
        out = engine(np.asarray(img))
    texts = getattr(out, "txts", None) or ()
    return [str(t) for t in texts]


async def read_text(data: bytes, scale: float = 1.0) -> list[str]:
    """`read_lines` off the event loop, in the OCR pool."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), read_lines, data, scale)
