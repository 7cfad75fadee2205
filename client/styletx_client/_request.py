"""Python values → ``StylizeRequest``. Option names, types, help texts and choices come from the generated
``_params`` (scripts/gen_params.py, from the proto), so the SDK, the CLI flags and the server cannot disagree
about what an option is called or accepts."""

from __future__ import annotations

import difflib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Union

import grpc
from google.protobuf.message import Message
from PIL import Image  # at run time: JobOptions' hints (masks are images) must resolve for get_type_hints
from styletx_proto.v1 import styletx_pb2 as pb

from ._errors import StyletxError
from ._params import OPTIONS, OptionSpec
from ._params import JobOptions as ParamOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["FORMAT_NAMES", "OPTIONS", "ImageInput", "JobOptions", "RegionOptions", "StyleInput", "Styles",
           "build_request", "set_option", "style_list"]

ImageInput = Union[bytes, str, "os.PathLike[str]", "Image.Image"]
#: A style image, or ``(image, weight)``.
StyleInput = Union[ImageInput, tuple[ImageInput, float]]  # noqa: UP007
#: One style, or a sequence of them.
Styles = Union[StyleInput, Sequence[StyleInput]]  # noqa: UP007
#: OutputFormat number → name (``png``, ``jpeg``, ``tiff16``; UNSPECIFIED means PNG).
FORMAT_NAMES = {v.number: v.name.removeprefix("OUTPUT_FORMAT_").lower() for v in pb.OutputFormat.DESCRIPTOR.values
                if v.number} | {0: "png"}


class RegionOptions(TypedDict, total=False):
    """Spatial and scale control (hand-written: masks are images, not proto scalars), per style in order.

    ``style_masks``: greyscale images, where each style applies (``Style.mask``; ``None``: everywhere not
    covered by a mask); ``style_own_layers`` / ``style_own_layer_weights``: a style's own layers and their
    weights (``Style.layers`` / ``layer_weights``), e.g. one style on deep layers and another on shallow ones;
    ``content_strength``: a greyscale map scaling the content loss per pixel (black: free to be painted);
    ``region_presets``: ``mode="preset"`` only, ``(preset name, mask)`` pairs — each preset painted in its mask
    over the request's ``preset`` (``Style.preset``).
    """

    style_masks: Sequence[ImageInput | None]
    style_own_layers: Sequence[Sequence[str] | None]
    style_own_layer_weights: Sequence[Sequence[float] | None]
    content_strength: ImageInput
    region_presets: Sequence[tuple[str, ImageInput]]


class JobOptions(ParamOptions, RegionOptions, total=False):
    """Every keyword option of ``Client.stylize``, ``stylize_stream`` and :func:`build_request`: the proto's
    options (:class:`ParamOptions`, generated) and the regional controls (:class:`RegionOptions`)."""


_PER_STYLE = ("style_masks", "style_own_layers", "style_own_layer_weights")
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


def style_list(styles: Styles, regions: RegionOptions | None = None) -> list[pb.Style]:
    """Wire styles from one style or a sequence (``"a.jpg"``, ``["a.jpg", ("b.jpg", 0.5)]``), each with its
    mask and own layers from ``regions`` (per style, in order; ``None`` or a shorter list: none)."""
    items: list[Any] = [styles] if _is_one_style(styles) else list(styles)  # type: ignore[arg-type]
    regions = regions or {}
    masks: list[Any] = list(regions.get("style_masks") or ())
    layers: list[Any] = list(regions.get("style_own_layers") or ())
    weights: list[Any] = list(regions.get("style_own_layer_weights") or ())
    for key, values in zip(_PER_STYLE, (masks, layers, weights), strict=True):
        if len(values) > len(items):
            raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT, f"{key}: {len(values)} given for "
                               f"{len(items)} styles", {"styletx-field": "styles"})
    wire = []
    for index, style in enumerate(items):
        image, weight = style if isinstance(style, tuple) else (style, None)
        mask = masks[index] if index < len(masks) else None
        wire.append(pb.Style(image=image_bytes(image, f"styles[{index}].image"), weight=weight,
                             mask=image_bytes(mask, f"styles[{index}].mask") if mask is not None else b"",
                             layers=(layers[index] if index < len(layers) else None) or (),
                             layer_weights=(weights[index] if index < len(weights) else None) or ()))
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
    regions = RegionOptions()
    for key in RegionOptions.__annotations__:
        if key in options:
            regions[key] = options.pop(key)  # type: ignore[literal-required,misc]
    request = pb.StylizeRequest(content=image_bytes(content, "content"), styles=style_list(styles, regions))
    for preset, mask in regions.get("region_presets") or ():
        field = f"styles[{len(request.styles)}]"
        request.styles.append(pb.Style(preset=preset, mask=image_bytes(mask, f"{field}.mask")))
    strength = regions.get("content_strength")
    if strength is not None:
        request.content_strength = image_bytes(strength, "content_strength")
    for name, value in options.items():
        set_option(request, name, value)
    return request
