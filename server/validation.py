"""Proto request → engine inputs, or a :class:`ServiceError` naming the offending proto field.

Ranges and choices come from :mod:`styletx_core.options` (``LIMITS``, ``CHOICES``, ``StylizeOptions``'s
own checks), so the service can never accept what the engine would refuse, nor refuse what it accepts. Every
error names the field as the client spelled it (``params.size``, ``styles[1].image``), never an engine name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from PIL import Image

from styletx.v1 import styletx_pb2 as pb
from styletx_core.errors import ImageError, OptionError
from styletx_core.imageio import DEFAULT_MAX_PIXELS, load_image
from styletx_core.options import StylizeOptions

from .errors import ServiceError

__all__ = [
    "OUTPUT_FORMATS",
    "Limits",
    "ValidatedRequest",
    "choice_to_enum",
    "defaults",
    "enum_to_choice",
    "options_to_params",
    "params_to_options",
    "validate_request",
]

_PARAMS = pb.StylizeParams.DESCRIPTOR
#: Proto output format → :func:`styletx_core.imageio.encode_image` format.
OUTPUT_FORMATS: dict[int, str] = {
    pb.OUTPUT_FORMAT_UNSPECIFIED: "png",
    pb.OUTPUT_FORMAT_PNG: "png",
    pb.OUTPUT_FORMAT_JPEG: "jpeg",
    pb.OUTPUT_FORMAT_TIFF16: "tiff16",
}
#: Engine option name → the proto field that carries it, where they differ.
_FIELD_NAMES = {"style_blend_weights": "styles[].weight"}


@dataclass(frozen=True)
class Limits:
    """What one server accepts; published in ``GetServerInfoResponse.limits``."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_size: int = 2048
    max_styles: int = 8
    queue_capacity: int = 16
    workers: int = 1
    max_receive_message_bytes: int = 64 * 1024 * 1024
    max_send_message_bytes: int = 4 * 1024 * 1024
    max_chunk_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class ValidatedRequest:
    """A request that passed every check: decoded images and engine options."""

    content: Image.Image
    styles: list[Image.Image]
    options: StylizeOptions
    mode: int
    output_format: str
    preview_format: str
    preview_max_side: int
    model_name: str = ""
    preset: str = ""
    variation: bool = False


def _enum(field: FieldDescriptor) -> tuple[EnumDescriptor, str]:
    """The field's enum and its value prefix (``OPTIMIZER_``), read off the UNSPECIFIED value."""
    enum = field.enum_type
    assert enum is not None, field.name
    return enum, enum.values[0].name.removesuffix("UNSPECIFIED")


def enum_to_choice(field: FieldDescriptor, number: int) -> str | None:
    """``OPTIMIZER_ADAM`` → ``"adam"``; ``None`` for the UNSPECIFIED value (meaning: the default)."""
    if number == 0:
        return None
    enum, prefix = _enum(field)
    value = enum.values_by_number.get(number)
    if value is None:
        raise ServiceError.invalid(f"params.{field.name}", f"unknown enum value {number}")
    return value.name.removeprefix(prefix).lower()


def choice_to_enum(field: FieldDescriptor, choice: str) -> int:
    """``"adam"`` → ``OPTIMIZER_ADAM``'s number (the inverse of :func:`enum_to_choice`)."""
    enum, prefix = _enum(field)
    return int(enum.values_by_name[prefix + choice.upper()].number)


def params_to_options(params: pb.StylizeParams, blend: tuple[float, ...] | None) -> StylizeOptions:
    """Unset fields keep :class:`StylizeOptions`'s defaults; the engine's own checks name the bad option."""
    kwargs: dict[str, Any] = {"style_blend_weights": blend}
    for field in _PARAMS.fields:
        value = _field_value(params, field)
        if value is not None:
            kwargs[field.name] = value
    try:
        return StylizeOptions(**kwargs)
    except OptionError as error:
        raise ServiceError.invalid(_proto_field(error.field), error.message) from None


def _field_value(params: Message, field: FieldDescriptor) -> Any:
    if field.is_repeated:
        values = tuple(getattr(params, field.name))
        return values or None
    if field.enum_type is not None:
        return enum_to_choice(field, getattr(params, field.name))
    return getattr(params, field.name) if params.HasField(field.name) else None


def _proto_field(option: str) -> str:
    return _FIELD_NAMES.get(option, f"params.{option}")


def options_to_params(options: StylizeOptions) -> pb.StylizeParams:
    """The defaults published by ``GetServerInfo``: every field set except ``seed`` (drawn per job)."""
    params = pb.StylizeParams()
    for name, value in options.public_dict().items():
        if value is None or name not in _PARAMS.fields_by_name:
            continue
        field = _PARAMS.fields_by_name[name]
        if field.is_repeated:
            getattr(params, name).extend(value)
        elif field.enum_type is not None:
            setattr(params, name, choice_to_enum(field, value))
        else:
            setattr(params, name, value)
    return params


def validate_request(
    request: pb.StylizeRequest, limits: Limits, modes: frozenset[int] = frozenset({pb.MODE_OPTIMIZE})
) -> ValidatedRequest:
    """Check ``request`` field by field (cheap checks first, image decoding last)."""
    mode = request.mode or pb.MODE_OPTIMIZE
    _check_mode(mode, modes)
    if not request.styles and mode != pb.MODE_CYCLEGAN:
        raise ServiceError.invalid("styles", "needs at least one style image")
    if len(request.styles) > limits.max_styles:
        raise ServiceError.invalid("styles",
                                   f"has {len(request.styles)} images; the limit is {limits.max_styles}")
    blend = _blend_weights(request.styles)
    options = params_to_options(request.params, blend)
    if options.size > limits.max_size:
        raise ServiceError.invalid("params.size",
                                   f"{options.size} exceeds this server's limit {limits.max_size}")
    output_format = _format(request.output_format, "output_format", "png")
    preview_format = _format(request.preview.format, "preview.format", "jpeg")
    content = _decode(request.content, "content", limits.max_pixels)
    styles = [_decode(s.image, f"styles[{i}].image", limits.max_pixels) for i, s in enumerate(request.styles)]
    return ValidatedRequest(content, styles, options, mode, output_format, preview_format,
                            request.preview.max_side, request.model_name, request.preset, request.variation)


def _check_mode(mode: int, modes: frozenset[int]) -> None:
    value = pb.Mode.DESCRIPTOR.values_by_number.get(mode)
    if value is None:
        raise ServiceError.invalid("mode", f"unknown value {mode}")
    if mode not in modes:
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED,
                           f"mode: {value.name} is not available on this server", field="mode")


def _blend_weights(styles: Any) -> tuple[float, ...] | None:
    weights = tuple(style.weight if style.HasField("weight") else 1.0 for style in styles)
    for index, weight in enumerate(weights):
        if not weight >= 0 or weight == float("inf"):  # `not >=` also catches NaN
            raise ServiceError.invalid(f"styles[{index}].weight", f"must be finite and ≥ 0, got {weight}")
    if weights and not any(weights):
        raise ServiceError.invalid("styles[].weight", "at least one weight must be positive")
    return weights if len(set(weights)) > 1 else None


def _format(value: int, field: str, default: str) -> str:
    if value not in OUTPUT_FORMATS:
        raise ServiceError.invalid(field, f"unknown value {value}")
    return OUTPUT_FORMATS[value] if value else default


def _decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ServiceError.invalid(field, "is empty")
    try:
        return load_image(data, max_pixels=max_pixels, field=field)
    except ImageError as error:
        raise ServiceError.invalid(error.field, error.message) from None


def defaults() -> pb.StylizeParams:
    """:class:`StylizeOptions`' defaults as the proto publishes them."""
    return options_to_params(StylizeOptions())

