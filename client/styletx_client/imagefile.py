"""Output files by extension, for the SDK (``StylizeOutput.save``) and every ``styletx`` command (the engine's
commands in ``styletx_cli`` too): one table of formats, one check before a job starts, one writer.

The extension decides the encoding: ``.png``, ``.jpg``/``.jpeg``, ``.webp``, ``.tif``/``.tiff``. A result that
already has that encoding is written byte for byte (so a 16-bit TIFF stays 16-bit); any other is decoded and
re-encoded with Pillow. An unknown extension is refused before any work. Parent folders are created (every
command does the same), and writability is checked up front so that no finished job is lost to a bad path.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from ._errors import StyletxError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["EXTENSIONS", "check_output", "check_writable", "file_format", "save_encoded", "save_image",
           "wire_format"]

#: File extension → Pillow format name.
EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
#: Pillow format → the encoding to ask a server for (WebP is transcoded here from lossless PNG).
_WIRE = {"PNG": "png", "JPEG": "jpeg", "TIFF": "tiff16", "WEBP": "png"}
#: A server's encoding name → Pillow's.
_PILLOW = {"png": "PNG", "jpeg": "JPEG", "tiff16": "TIFF"}
_SAVE_OPTIONS: dict[str, dict[str, object]] = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95},
                                               "TIFF": {"compression": "tiff_deflate"}}


def file_format(path: str | os.PathLike[str], option: str = "output") -> str:
    """Pillow's format name for ``path``'s extension; an unknown one is INVALID_ARGUMENT naming ``option``."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        known = ", ".join(sorted(EXTENSIONS))
        raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{option}: cannot write {suffix or 'a file without extension'!r} ({path}); "
                           f"use one of {known}", {"styletx-field": option})
    return EXTENSIONS[suffix]


def wire_format(path: str | os.PathLike[str], option: str = "output") -> str:
    """The ``output_format`` to request for a file at ``path`` (``png``, ``jpeg`` or ``tiff16``)."""
    return _WIRE[file_format(path, option)]


def check_output(path: str | os.PathLike[str], option: str = "output") -> Path:
    """Refuse an unknown extension or an unwritable place *before* the work; create missing parent folders."""
    file_format(path, option)
    return check_writable(path, option)


def check_writable(path: str | os.PathLike[str], option: str = "output") -> Path:
    """Create ``path``'s missing parent folders and check that the file can be written (any kind of file)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{option}: cannot create folder {target.parent}: {error.strerror}",
                           {"styletx-field": option}) from None
    if target.is_dir():
        raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT, f"{option}: {target} is a folder",
                           {"styletx-field": option})
    try:  # a real probe: permissions, read-only file systems, and root (for whom os.access always says yes)
        with tempfile.TemporaryFile(dir=target.parent, prefix=f".{target.name}."):
            pass
    except OSError as error:
        raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{option}: cannot write in {target.parent}: {error.strerror}",
                           {"styletx-field": option}) from None
    return target


def save_encoded(data: bytes, encoding: str, path: str | os.PathLike[str]) -> Path:
    """Write encoded image bytes (``encoding`` as a server names it) to ``path`` in the extension's format:
    as they are when they match, else re-encoded."""
    target = check_output(path)
    wanted = file_format(target)
    if _PILLOW.get(encoding) == wanted:
        _write_atomically(target, data)
        return target
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return save_image(image, target)


def save_image(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Encode a PIL image by ``path``'s extension (JPEG drops alpha) and write it."""
    target = check_output(path)
    fmt = file_format(target)
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
    _write_atomically(target, buffer.getvalue())
    return target


def _write_atomically(target: Path, data: bytes) -> None:
    """Write beside the target and rename, so a crash never leaves half an image under the final name."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, target.stat().st_mode & 0o777 if target.exists() else 0o644)  # mkstemp's is 0600
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
