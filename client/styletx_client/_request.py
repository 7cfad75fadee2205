"""Python values → ``StylizeRequest``. Option names, types, help texts and choices come from the generated
``_params`` (scripts/gen_params.py, from the proto), so the SDK, the CLI flags and the server cannot disagree
about what an option is called or accepts."""

from __future__ import annotations

import difflib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import grpc
from google.protobuf.message import Message
from styletx_proto.v1 import styletx_pb2 as pb

from ._errors import StyletxError
from ._params import OPTIONS, JobOptions, OptionSpec

if TYPE_CHECKING:
    from PIL import Image
    from typing_extensions import Unpack

__all__ = ["FORMAT_NAMES", "OPTIONS", "ImageInput", "JobOptions", "StyleInput", "Styles", "build_request", "set_option",
           "style_list"]

ImageInput = Union[bytes, str, "os.PathLike[str]", "Image.Image"]
#: A style image, or ``(image, weight)``.
StyleInput = Union[ImageInput, tuple[ImageInput, float]]  # noqa: UP007
#: One style, or a sequence of them.
Styles = Union[StyleInput, Sequence[StyleInput]]  # noqa: UP007
#: OutputFormat number → name (``png``, ``jpeg``, ``tiff16``; UNSPECIFIED means PNG).
FORMAT_NAMES = {v.number: v.name.removeprefix("OUTPUT_FORMAT_").lower() for v in pb.OutputFormat.DESCRIPTOR.values
                if v.number} | {0: "png"}
#: Short names accepted beside the enum's own (``output_format="jpg"``).
_ALIASES = {"jpg": "jpeg", "tiff": "tiff16"}


def image_bytes(image: ImageInput, field: str) -> bytes:
    """Encoded bytes as given (never re-encoded), a file's bytes, or a PIL image as PNG."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        try:
            return Path(image).read_bytes()
        except OSError as error:
            raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: cannot read {image}: {error.strerror}",
                               {"styletx-field": field}) from None
    if hasattr(image, "save"):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{field}: expected bytes, a path or a PIL image; got {type(image).__name__}",
                       {"styletx-field": field})


def _is_one_style(styles: Any) -> bool:
    """A single image (a path string, bytes, a PIL image) or one ``(image, weight)`` pair."""
    if isinstance(styles, str | bytes | bytearray | memoryview | os.PathLike) or hasattr(styles, "save"):
        return True
    return isinstance(styles, tuple) and len(styles) == 2 and isinstance(styles[1], int | float)


def style_list(styles: Styles) -> list[pb.Style]:
    """Wire styles from one style or a sequence (``"a.jpg"``, ``["a.jpg", ("b.jpg", 0.5)]``)."""
    items: list[Any] = [styles] if _is_one_style(styles) else list(styles)  # type: ignore[arg-type]
    wire = []
    for index, style in enumerate(items):
        image, weight = style if isinstance(style, tuple) else (style, None)
        wire.append(pb.Style(image=image_bytes(image, f"styles[{index}].image"), weight=weight))
    return wire


def _value(name: str, spec: OptionSpec, field: Any, value: Any) -> Any:
    """The wire value of one option (an enum's number for its name); wrong kinds name the option."""
    if not spec.choices:
        return value
    value = _ALIASES.get(value, value) if isinstance(value, str) else value
    if value not in spec.choices:
        raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{name}: must be one of {', '.join(spec.choices)}; got {value!r}",
                           {"styletx-field": ".".join(spec.path)})
    enum = field.enum_type
    number: int = enum.values_by_name[enum.values[0].name.removesuffix("UNSPECIFIED") + value.upper()].number
    return number


def set_option(request: Message, name: str, value: Any) -> None:
    """Set the option ``name`` (a key of :class:`JobOptions`) on ``request`` (a StylizeRequest, or a
    VideoConfig, which has the same fields but fewer); None leaves the server default."""
    spec = OPTIONS.get(name)
    if spec is None or spec.path[0] not in request.DESCRIPTOR.fields_by_name:
        known = [n for n, s in OPTIONS.items() if s.path[0] in request.DESCRIPTOR.fields_by_name]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
        raise TypeError(f"unknown option {name!r}; {hint}")
    if value is None:
        return
    message = request
    for part in spec.path[:-1]:
        message = getattr(message, part)
    field = message.DESCRIPTOR.fields_by_name[spec.path[-1]]
    try:
        if spec.repeated:
            getattr(message, field.name).extend(_value(name, spec, field, v) for v in value)
        else:
            setattr(message, field.name, _value(name, spec, field, value))
    except (TypeError, ValueError) as error:
        raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {error}",
                           {"styletx-field": ".".join(spec.path)}) from None


def build_request(content: ImageInput, styles: Styles = (), **options: Unpack[JobOptions]) -> pb.StylizeRequest:
    """The request for ``content`` and ``styles`` (one, or a sequence; ``(image, weight)`` for a blend weight).

    ``options`` are :class:`JobOptions` (typed, documented from the proto); an unknown name raises TypeError
    before anything is sent.
    """
    request = pb.StylizeRequest(content=image_bytes(content, "content"), styles=style_list(styles))
    for name, value in options.items():
        set_option(request, name, value)
    return request
