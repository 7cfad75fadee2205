"""Image decoding of hostile and unusual inputs, and the output encoders."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from styletx_core.errors import ImageError
from styletx_core.imageio import encode_image, load_image, pil_to_tensor, tensor_to_pil


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    loaded = load_image(_encode(image, "JPEG", exif=exif))
    assert loaded.size == (20, 40)


def test_alpha_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(_encode(image)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "LA", "I;16", "F"])
def test_modes_become_rgb(mode: str) -> None:
    image = Image.new("RGB", (8, 6), (120, 60, 200)).convert(mode) if mode not in ("I;16", "F") else None
    if mode == "I;16":
        image = Image.fromarray(np.full((6, 8), 40000, dtype=np.uint16)).convert("I;16")
    if mode == "F":
        image = Image.fromarray(np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8), "F")
    assert image is not None
    fmt = "JPEG" if mode == "CMYK" else "TIFF"
    loaded = load_image(_encode(image, fmt))
    assert loaded.mode == "RGB" and loaded.size == (8, 6)
    if mode == "I;16":
        assert loaded.getpixel((0, 0))[0] == round(40000 / 257)  # scaled, not clipped to 255


def test_icc_profile_is_converted_to_srgb() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    image = Image.new("RGB", (4, 4), (10, 100, 200))
    data = _encode(image, icc_profile=profile.tobytes())
    assert load_image(data).getpixel((0, 0)) == pytest.approx((10, 100, 200), abs=2)


@pytest.mark.parametrize(
    ("data", "match"),
    [(b"", "empty"), (b"not an image at all", "not a readable image"),
     (_encode(Image.new("RGB", (64, 64)))[:60], "corrupt|not a readable")],
)
def test_unreadable_inputs_raise_image_error(data: bytes, match: str) -> None:
    with pytest.raises(ImageError, match=match) as caught:
        load_image(data, field="content")
    assert caught.value.field == "content"


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A PNG header declaring 100000×100000 pixels with almost no data.
    png = _encode(Image.new("L", (1, 1)))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    import zlib

    chunk = b"IHDR" + ihdr
    bomb = png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]
    with pytest.raises(ImageError, match="pixels"):
        load_image(bomb, max_pixels=10_000_000)


def test_size_limit() -> None:
    with pytest.raises(ImageError, match="limit is 100"):
        load_image(_encode(Image.new("RGB", (20, 20))), max_pixels=100)


def test_missing_path_is_an_image_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "missing.png")


def test_encoders_round_trip() -> None:
    image = Image.fromarray(np.arange(48 * 3, dtype=np.uint8).reshape(6, 8, 3), "RGB")
    assert np.array_equal(np.asarray(load_image(encode_image(image, "png"))), np.asarray(image))
    assert Image.open(io.BytesIO(encode_image(image, "jpeg"))).format == "JPEG"
    tiff = encode_image(pil_to_tensor(image), "tiff16")
    values = np.frombuffer(tiff[-8 * 6 * 3 * 2:], dtype="<u2").reshape(6, 8, 3)
    assert np.array_equal(values // 257, np.asarray(image))  # 16-bit values carry the 8-bit ones exactly
    assert Image.open(io.BytesIO(tiff)).size == (8, 6)
    with pytest.raises(ValueError, match="format"):
        encode_image(image, "gif")


def test_tensor_round_trip() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8), "RGB")
    assert np.array_equal(np.asarray(tensor_to_pil(pil_to_tensor(image))), np.asarray(image))
