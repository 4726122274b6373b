"""The offline provider draws real images and honours masks pixel-exactly."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops

from gptimg_flows.errors import InvalidRequest
from gptimg_flows.models import EditRequest, ImageRequest
from gptimg_flows.providers.base import PreparedInputs
from gptimg_flows.providers.offline import LenientOfflineProvider, OfflineProvider

from .support.images import png_input


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


async def _one(
    request: ImageRequest, key: str = "k" * 64, inputs: PreparedInputs | None = None
) -> bytes:
    job = await LenientOfflineProvider().submit(request, inputs, key)
    assert job.status is not None and job.status.state.terminal
    data = job.status.outputs[0].data
    assert data is not None
    return data


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_draws_the_requested_size_and_format(fmt: str, pil: str) -> None:
    data = await _one(ImageRequest(prompt="a red kite", size="320x192", output_format=fmt))  # type: ignore[arg-type]
    img = _open(data)
    assert (img.format, img.size) == (pil, (320, 192))


async def test_same_prompt_and_seed_give_same_bytes_and_prompts_differ() -> None:
    a = await _one(ImageRequest(prompt="a red kite", size="128x128", seed=7))
    b = await _one(ImageRequest(prompt="a red kite", size="128x128", seed=7))
    c = await _one(ImageRequest(prompt="a blue kite", size="128x128", seed=7))
    d = await _one(ImageRequest(prompt="a red kite", size="128x128", seed=8))
    assert a == b
    assert len({a, c, d}) == 3


async def test_transparent_background_has_transparent_pixels() -> None:
    data = await _one(ImageRequest(prompt="a logo", size="256x256", background="transparent"))
    alpha = _open(data).getchannel("A")
    assert alpha.getextrema()[0] == 0


async def test_masked_edit_keeps_opaque_pixels_byte_identical_and_changes_the_rest() -> None:
    base = _open(await _one(ImageRequest(prompt="a harbour", size="256x256")))
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 256, 100))  # top 100 rows editable
    inputs = PreparedInputs(images=[png_input(base)], mask=png_input(mask))
    req = EditRequest(prompt="a storm", images=[b"x"], mask=b"m")
    out = _open(await _one(req, inputs=inputs)).convert("RGBA")
    base = base.convert("RGBA")
    keep = (0, 100, 256, 256)
    assert ImageChops.difference(out.crop(keep), base.crop(keep)).getbbox() is None
    changed = ImageChops.difference(out.crop((0, 0, 256, 100)), base.crop((0, 0, 256, 100)))
    assert changed.getbbox() is not None


def test_validation_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        OfflineProvider().validate(ImageRequest(prompt="p", n=11))
    assert err.value.field == "n" and "1-10" in str(err.value)
    with pytest.raises(InvalidRequest) as err:
        OfflineProvider().validate(ImageRequest(prompt="p", size="100x100"))
    assert err.value.field == "size" and "multiples of 16" in str(err.value)
    with pytest.raises(InvalidRequest, match="transparent background needs"):
        OfflineProvider().validate(
            ImageRequest(prompt="p", background="transparent", output_format="jpeg")
        )
