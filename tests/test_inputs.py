"""Inputs are read and checked before anything is uploaded or paid."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.inputs import load_image, prepare_mask


def _png(
    path: Path, size: tuple[int, int], mode: str = "RGBA", colour: object = (10, 20, 30, 255)
) -> Path:
    Image.new(mode, size, colour).save(path, "PNG")  # type: ignore[arg-type]
    return path


async def test_local_path_is_loaded_with_digest_and_alpha(tmp_path: Path) -> None:
    img = await load_image(str(_png(tmp_path / "a.png", (64, 32))), "images[0]")
    assert (img.mime, img.width, img.height, img.has_alpha) == ("image/png", 64, 32, True)
    assert len(img.sha256) == 64 and img.url is None


async def test_missing_file_names_the_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"images\[0\]: no such file"):
        await load_image(str(tmp_path / "nope.png"), "images[0]")


async def test_a_text_file_is_not_an_image(tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("<html>hello</html>")
    with pytest.raises(InvalidRequest, match="not an image"):
        await load_image(str(bad), "images[0]")


async def test_inputs_over_the_cap_are_refused(tmp_path: Path) -> None:
    path = _png(tmp_path / "big.png", (256, 256))
    with pytest.raises(InvalidRequest, match="cap"):
        await load_image(str(path), "images[0]", max_bytes=100)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.8/a.png",
        "http://127.0.0.1:9/a.png",
    ],
)
async def test_file_urls_and_private_networks_are_not_fetched(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPTIMG_ALLOW_PRIVATE_URLS", raising=False)
    with pytest.raises(InvalidRequest) as err:
        await load_image(url, "mask")
    assert err.value.field == "mask"
    assert "file://" in str(err.value) or "private" in str(err.value)


async def test_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    image = await load_image(str(_png(tmp_path / "a.png", (64, 64))), "images[0]")
    mask = await load_image(str(_png(tmp_path / "m.png", (32, 64))), "mask")
    with pytest.raises(InvalidRequest, match="mask is 32x64 but the image is 64x64"):
        prepare_mask(mask, image)


async def test_black_and_white_mask_without_alpha_is_converted(tmp_path: Path) -> None:
    image = await load_image(str(_png(tmp_path / "a.png", (64, 64))), "images[0]")
    bw = Image.new("L", (64, 64), 0)
    bw.paste(255, (0, 0, 64, 16))  # white = area to edit
    bw.save(tmp_path / "bw.png")
    mask = prepare_mask(await load_image(str(tmp_path / "bw.png"), "mask"), image)
    alpha = Image.open(io.BytesIO(mask.data)).getchannel("A")
    assert mask.has_alpha and alpha.getpixel((0, 0)) == 0 and alpha.getpixel((0, 63)) == 255


async def test_mask_without_alpha_that_is_not_black_and_white_is_refused(tmp_path: Path) -> None:
    image = await load_image(str(_png(tmp_path / "a.png", (64, 64))), "images[0]")
    grey = _png(tmp_path / "g.png", (64, 64), mode="RGB", colour=(120, 130, 140))
    with pytest.raises(InvalidRequest, match="no alpha channel"):
        prepare_mask(await load_image(str(grey), "mask"), image)


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_a_mask_that_marks_nothing_is_refused(mode: str) -> None:
    """A fully opaque mask (or an all-black one without alpha) asks for no change."""

    from PIL import Image

    from gptimg_flows.errors import InvalidRequest

    from .support.images import png_input

    source = png_input(Image.new("RGB", (32, 32), "white"))
    mask = (
        Image.new("RGBA", (32, 32), (0, 0, 0, 255))
        if mode == "RGBA"
        else Image.new("L", (32, 32), 0)
    )
    with pytest.raises(InvalidRequest, match="mask marks nothing to edit"):
        prepare_mask(png_input(mask), source)
