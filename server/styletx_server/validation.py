"""Proto request → engine inputs, or a :class:`ServiceError` naming the offending proto field.

Ranges and choices come from :mod:`styletx_core.options` (``LIMITS``, ``CHOICES``, ``StylizeOptions``'s
own checks), so the service can never accept what the engine would refuse, nor refuse what it accepts. Every
error names the field as the client spelled it (``params.size``, ``styles[1].image``), never an engine name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.errors import ImageError, OptionError
from styletx_core.geometry import check_geometry, fit_long_side
from styletx_core.imageio import load_image
from styletx_core.options import LIMITS, StylizeOptions
from styletx_core.regions import RegionPlan, StyleControl

from .errors import ServiceError
from .limits import Limits

__all__ = [
    "OUTPUT_FORMATS",
    "ModelCatalog",
    "ValidatedRequest",
    "check_mode",
    "check_mode_fields",
    "choice_to_enum",
    "decode",
    "defaults",
    "enum_to_choice",
    "fast_params",
    "options_to_params",
    "output_format",
    "params_to_options",
    "regional_controls",
    "style_blend",
    "tiling",
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
    strength: float = 1.0
    """FAST/PRESET/HYBRID: style strength (FastParams.strength)."""
    processing_size: int | None = None
    """FAST/PRESET/HYBRID: long side the network runs at (None: the output's)."""
    tile: int = 512
    """CYCLEGAN: tile side."""
    overlap: int = 64
    """CYCLEGAN: tile overlap."""
    skip_quality: bool = False
    controls: tuple[StyleControl | None, ...] = ()
    """Per style: its mask and own layers (``Style.mask``, ``Style.layers``); empty when no style has any."""
    content_strength: Image.Image | None = None
    """The content-strength map (``StylizeRequest.content_strength``)."""
    region_presets: tuple[str, ...] = ()
    """PRESET: each region's pre-trained style (``Style.preset``), in the order of ``controls``."""


#: Names of the CycleGAN generators a server has (rescanned per request: models may be added while it runs).
ModelCatalog = Callable[[], Sequence[str]]
#: Modes that need no style image.
_STYLELESS = frozenset({pb.MODE_PRESET, pb.MODE_CYCLEGAN})
#: Modes whose output size defaults to the content's own (capped by Limits.max_size), as a network's would.
_NATIVE_SIZE = frozenset({pb.MODE_FAST, pb.MODE_PRESET, pb.MODE_CYCLEGAN})


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


def params_to_options(params: pb.StylizeParams, blend: tuple[float, ...] | None,
                      prefix: str = "params.") -> StylizeOptions:
    """Unset fields keep :class:`StylizeOptions`'s defaults; the engine's own checks name the bad option."""
    kwargs: dict[str, Any] = {"style_blend_weights": blend}
    for field in _PARAMS.fields:
        value = _field_value(params, field, prefix)
        if value is not None:
            kwargs[field.name] = value
    try:
        return StylizeOptions(**kwargs)
    except OptionError as error:
        raise ServiceError.invalid(_proto_field(error.field, prefix), error.message) from None


def _field_value(params: Message, field: FieldDescriptor, prefix: str) -> Any:
    if field.is_repeated:
        values = tuple(getattr(params, field.name))
        return values or None
    if field.enum_type is not None:
        try:
            return enum_to_choice(field, getattr(params, field.name))
        except ServiceError as error:
            raise ServiceError.invalid(f"{prefix}{field.name}", error.message.split(": ", 1)[-1]) from None
    return getattr(params, field.name) if params.HasField(field.name) else None


def _proto_field(option: str, prefix: str = "params.") -> str:
    if option in _FIELD_NAMES:
        return prefix.removesuffix("params.") + _FIELD_NAMES[option]
    return f"{prefix}{option}"


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
    request: pb.StylizeRequest, limits: Limits, modes: frozenset[int] = frozenset({pb.MODE_OPTIMIZE}),
    catalog: ModelCatalog | None = None,
) -> ValidatedRequest:
    """Check ``request`` field by field (cheap checks first, image decoding last).

    ``catalog`` lists the CycleGAN generators, so an unknown ``model_name`` is INVALID_ARGUMENT naming the
    known ones rather than a failure after the job waited in the queue.
    """
    mode = request.mode or pb.MODE_OPTIMIZE
    check_mode(mode, modes)
    check_mode_fields(mode, request.preset, request.model_name, catalog)
    fast = fast_params(request.fast, limits)
    tiles = tiling(request.cyclegan)
    if not request.styles and mode not in _STYLELESS:
        raise ServiceError.invalid("styles", "needs at least one style image")
    if len(request.styles) > limits.max_styles:
        raise ServiceError.invalid("styles",
                                   f"has {len(request.styles)} images; the limit is {limits.max_styles}")
    if request.params.HasField("size") and request.params.size > limits.max_size:  # before the engine's own range
        raise ServiceError.invalid("params.size",
                                   f"{request.params.size} exceeds this server's limit {limits.max_size}")
    options = params_to_options(request.params, style_blend(request.styles))
    native = mode in _NATIVE_SIZE and not request.params.HasField("size")
    if options.size > limits.max_size and not native:
        raise ServiceError.invalid("params.size",
                                   f"{options.size} exceeds this server's limit {limits.max_size}")
    result_format = output_format(request.output_format, "output_format", "png")
    preview_format = output_format(request.preview.format, "preview.format", "jpeg")
    region_presets = check_region_presets(request.styles, mode)
    content = decode(request.content, "content", limits.max_pixels)
    styles = [] if region_presets else [decode(s.image, f"styles[{i}].image", limits.max_pixels)
                                        for i, s in enumerate(request.styles)]
    if native:
        options = options.replace(size=max(16, min(max(content.size), limits.max_size)))
    if mode in (pb.MODE_OPTIMIZE, pb.MODE_HYBRID):
        check_vgg_geometry(content, styles, options)
    size = fit_long_side(content.size, options.size)
    controls, strength = regional_controls(request.styles, request.content_strength, size, options, limits)
    if strength is not None and mode not in (pb.MODE_OPTIMIZE, pb.MODE_HYBRID):
        raise ServiceError.invalid("content_strength", "needs MODE_OPTIMIZE or MODE_HYBRID (it scales a loss)")
    if controls and mode == pb.MODE_CYCLEGAN:
        raise ServiceError.invalid("styles", "masks and per-style layers need a mode with styles")
    return ValidatedRequest(content, styles, options, mode, result_format, preview_format,
                            request.preview.max_side, request.model_name, request.preset, request.variation,
                            *fast, *tiles, request.skip_quality, controls, strength, region_presets)


def check_region_presets(styles: Sequence[pb.Style], mode: int, prefix: str = "") -> tuple[str, ...]:
    """PRESET's regions: each style names a known preset and carries a mask, and nothing else; other modes
    must not name presets per style. Returns the region presets in order (empty outside PRESET)."""
    if mode != pb.MODE_PRESET:
        for index, style in enumerate(styles):
            if style.preset:
                raise ServiceError.invalid(f"{prefix}styles[{index}].preset", "only MODE_PRESET takes a preset per "
                                           "region (other modes take style images)")
        return ()
    from styletx_core.fast import preset_index

    for index, style in enumerate(styles):
        field = f"{prefix}styles[{index}]"
        if style.image or style.layers or style.layer_weights:
            raise ServiceError.invalid(f"{field}.image" if style.image else f"{field}.layers",
                                       "MODE_PRESET regions take a preset and a mask, not images or layers")
        if not style.mask:
            raise ServiceError.invalid(f"{field}.mask", "a region preset needs a mask (where it applies)")
        try:
            preset_index(style.preset)
        except OptionError as error:
            raise ServiceError.invalid(f"{field}.preset", error.message) from None
    return tuple(style.preset for style in styles)


def regional_controls(
    styles: Sequence[pb.Style], strength_data: bytes, size: tuple[int, int], options: StylizeOptions,
    limits: Limits, prefix: str = "",
) -> tuple[tuple[StyleControl | None, ...], Image.Image | None]:
    """Per-style masks and layers, and the content-strength map, checked at the output ``size``: a blank mask, one
    that covers nothing there, or a layer the model lacks is INVALID_ARGUMENT naming ``styles[i].mask`` /
    ``styles[i].layers`` (the engine's own checks, :meth:`RegionPlan.build`, so they never disagree)."""
    controls = tuple(_control(style, f"{prefix}styles[{i}]", limits) for i, style in enumerate(styles))
    strength = decode(strength_data, f"{prefix}content_strength", limits.max_pixels) if strength_data else None
    if not any(controls) and strength is None:
        return (), None
    try:
        RegionPlan.build(controls, len(styles), size, options, strength)
    except OptionError as error:
        raise ServiceError.invalid(prefix + error.field, error.message) from None
    return controls, strength


def _control(style: pb.Style, field: str, limits: Limits) -> StyleControl | None:
    if not (style.mask or style.layers or style.layer_weights):
        return None
    mask = decode(style.mask, f"{field}.mask", limits.max_pixels) if style.mask else None
    return StyleControl(mask, tuple(style.layers) or None, tuple(style.layer_weights) or None)


def check_vgg_geometry(content: Image.Image, styles: list[Image.Image], options: StylizeOptions) -> None:
    """Images too thin for VGG's four poolings are refused here, before the job waits in the queue."""
    try:
        check_geometry(content.size, [style.size for style in styles], options)
    except ImageError as error:
        raise ServiceError.invalid(error.field, error.message) from None


def check_mode_fields(mode: int, preset: str, model_name: str, catalog: ModelCatalog | None,
                      prefix: str = "") -> None:
    """The per-mode names: a known preset for PRESET, a known generator for CYCLEGAN."""
    if mode == pb.MODE_PRESET:
        from styletx_core.fast import preset_index

        if not preset:
            raise ServiceError.invalid(f"{prefix}preset", "MODE_PRESET needs a preset name (GetServerInfo.presets)")
        try:
            preset_index(preset)
        except OptionError as error:
            raise ServiceError.invalid(f"{prefix}preset", error.message) from None
    if mode == pb.MODE_CYCLEGAN:
        known = sorted(catalog()) if catalog is not None else None
        field = f"{prefix}model_name"
        if not model_name:
            names = ", ".join(known) if known else "none on this server"
            raise ServiceError.invalid(field, f"MODE_CYCLEGAN needs a generator name; known: {names}")
        if known is not None and model_name not in known:
            raise ServiceError.invalid(field, f"unknown CycleGAN model {model_name!r}; known: "
                                       f"{', '.join(known) or 'none (see --models-dir)'}")


def fast_params(fast: pb.FastParams, limits: Limits, prefix: str = "fast.") -> tuple[float, int | None]:
    """``(strength, processing_size)`` of the feed-forward modes."""
    strength = fast.strength if fast.HasField("strength") else 1.0
    if not 0.0 <= strength <= 1.0:  # also refuses NaN
        raise ServiceError.invalid(f"{prefix}strength", f"must be between 0 and 1, got {strength}")
    if not fast.HasField("processing_size"):
        return strength, None
    low, high = LIMITS["size"]
    size, top = fast.processing_size, min(high, limits.max_size)
    if not low <= size <= top:
        raise ServiceError.invalid(f"{prefix}processing_size", f"must be from {low:g} to {top:g}, got {size}")
    return strength, size


def tiling(params: pb.CycleGANParams, prefix: str = "cyclegan.") -> tuple[int, int]:
    """``(tile, overlap)`` of CYCLEGAN, defaults filled in."""
    tile = params.tile if params.HasField("tile") else 512
    overlap = params.overlap if params.HasField("overlap") else min(64, tile // 2 // 4 * 4)
    if tile < 32 or tile % 4 or tile > 4096:
        raise ServiceError.invalid(f"{prefix}tile", f"must be a multiple of 4 from 32 to 4096, got {tile}")
    if overlap % 4 or overlap > tile // 2:
        raise ServiceError.invalid(f"{prefix}overlap",
                                   f"must be a multiple of 4 of at most tile/2 ({tile // 2}), got {overlap}")
    return tile, overlap


def check_mode(mode: int, modes: frozenset[int], field: str = "mode") -> None:
    """A known mode (INVALID_ARGUMENT) that this server implements (UNIMPLEMENTED)."""
    value = pb.Mode.DESCRIPTOR.values_by_number.get(mode)
    if value is None:
        raise ServiceError.invalid(field, f"unknown value {mode}")
    if mode not in modes:
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED,
                           f"{field}: {value.name} is not available on this server", field=field)


def style_blend(styles: Any, field: str = "styles") -> tuple[float, ...] | None:
    """Per-style blend weights, None when all equal (the engine's "no blend")."""
    weights = tuple(style.weight if style.HasField("weight") else 1.0 for style in styles)
    for index, weight in enumerate(weights):
        if not weight >= 0 or weight == float("inf"):  # `not >=` also catches NaN
            raise ServiceError.invalid(f"{field}[{index}].weight", f"must be finite and ≥ 0, got {weight}")
    if weights and not any(weights):
        raise ServiceError.invalid(f"{field}[].weight", "at least one weight must be positive")
    return weights if len(set(weights)) > 1 else None


def output_format(value: int, field: str, default: str) -> str:
    """OutputFormat enum → ``encode_image`` format name (UNSPECIFIED: ``default``)."""
    if value not in OUTPUT_FORMATS:
        raise ServiceError.invalid(field, f"unknown value {value}")
    return OUTPUT_FORMATS[value] if value else default


def decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Encoded bytes → RGB image, or INVALID_ARGUMENT naming ``field``."""
    if not data:
        raise ServiceError.invalid(field, "is empty")
    try:
        return load_image(data, max_pixels=max_pixels, field=field)
    except ImageError as error:
        raise ServiceError.invalid(error.field, error.message) from None


def defaults() -> pb.StylizeParams:
    """:class:`StylizeOptions`' defaults as the proto publishes them."""
    return options_to_params(StylizeOptions())

