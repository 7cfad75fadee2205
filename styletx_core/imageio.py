"""Image decoding and encoding with Pillow, hardened for input from outside.

Everything that reaches the engine is an 8-bit sRGB ``RGB`` image: EXIF orientation applied, ICC profiles
converted to sRGB, alpha composited on white, grayscale/palette/CMYK/16-bit converted.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .geometry import DEFAULT_MAX_PIXELS, fit_long_side

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "OUTPUT_FORMATS",
    "encode_image",
    "load_image",
    "pil_to_tensor",
    "resize_long_side",
    "tensor_to_pil",
]

OUTPUT_FORMATS = ("png", "jpeg", "tiff16")
_SRGB = ImageCms.createProfile("sRGB")


def load_image(
    source: bytes | str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, field: str = "image"
) -> Image.Image:
    """Decode ``source`` (bytes or a path) into an sRGB ``RGB`` image, or raise :class:`ImageError`.

    The header is checked against ``max_pixels`` before any pixel is decoded, so a decompression bomb costs
    nothing.
    """
    data = _read_bytes(source, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            _check_size(image.size, max_pixels, field)
            image.load()
            image = _normalise(image)
    except ImageError:
        raise
    except UnidentifiedImageError:  # its message names the BytesIO object, which tells a user nothing
        raise ImageError("not a readable image (not a format Pillow decodes: PNG, JPEG, WebP, TIFF, ...)",
                         field) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"not a readable image ({error})", field) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, TypeError) as error:
        raise ImageError(
            f"corrupt or unsupported image data ({type(error).__name__}: {error})", field
        ) from None
    return image


def _read_bytes(source: bytes | str | os.PathLike[str], field: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            raise ImageError(f"cannot read {source}: {error.strerror or error}", field) from None
    if not data:
        raise ImageError("is empty", field)
    return data


def _check_size(size: tuple[int, int], max_pixels: int, field: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"has no pixels ({width}×{height})", field)
    if width * height > max_pixels:
        raise ImageError(f"is {width}×{height} = {width * height} pixels; the limit is {max_pixels}", field)


def _normalise(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image) or image
    image = _to_srgb(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits rather than clipping (Pillow's convert('L') clips at 255).
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        array = (array - array.min()) / max(float(np.ptp(array)), 1e-12) * 255
        image = Image.fromarray(array.astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _to_srgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=output_mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # A broken profile is not worth refusing the image for: treat it as sRGB.
    return converted or image


def encode_image(image: Image.Image | torch.Tensor, fmt: str = "png", *, quality: int = 95) -> bytes:
    """Encode to ``png``, ``jpeg`` or ``tiff16`` (16 bits per channel, from the float result when given)."""
    fmt = fmt.lower()
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    buffer = io.BytesIO()
    if fmt == "tiff16":
        array = _as_float_array(image)
        array16 = np.round(np.clip(array, 0, 1) * 65535).astype("<u2")
        _write_tiff16(buffer, array16)
    else:
        pil = image if isinstance(image, Image.Image) else tensor_to_pil(image)
        pil.save(buffer, format="PNG" if fmt == "png" else "JPEG", quality=quality)
    return buffer.getvalue()


def _as_float_array(image: Image.Image | torch.Tensor) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return image.detach().float().cpu().squeeze(0).permute(1, 2, 0).numpy()


def _write_tiff16(buffer: io.BytesIO, array: np.ndarray) -> None:
    """Pillow cannot write 16-bit RGB, so write a minimal baseline TIFF (uncompressed, one strip) by hand."""
    import struct

    height, width, _ = array.shape
    pixels = array.tobytes()
    entries = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, None),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, None),
        (277, 3, 1, 3),
        (278, 4, 1, height),
        (279, 4, 1, len(pixels)),
        (284, 3, 1, 1),
    ]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    bits_offset = ifd_offset + ifd_size
    data_offset = bits_offset + 6
    buffer.write(struct.pack("<2sHI", b"II", 42, ifd_offset))
    buffer.write(struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        if tag == 258:
            value = bits_offset
        elif tag == 273:
            value = data_offset
        fmt = "<HHIHH" if kind == 3 and count == 1 else "<HHII"
        buffer.write(
            struct.pack(fmt, tag, kind, count, value, 0)
            if fmt == "<HHIHH"
            else struct.pack(fmt, tag, kind, count, value)
        )
    buffer.write(struct.pack("<I", 0))
    buffer.write(struct.pack("<HHH", 16, 16, 16))
    buffer.write(pixels)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → 1×3×H×W float tensor in 0–1."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """1×3×H×W (or 3×H×W) tensor in 0–1 → RGB PIL image (clamped, rounded)."""
    array = tensor.detach().float().cpu().squeeze(0).clamp(0, 1).permute(1, 2, 0).numpy()
    return Image.fromarray(np.round(array * 255).astype(np.uint8), "RGB")


def resize_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """Resize so the longer side is ``long_side`` (aspect kept, each side at least 1 px), Lanczos."""
    size = fit_long_side(image.size, long_side)
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)
