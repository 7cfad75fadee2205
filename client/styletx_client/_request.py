"""Python values → ``StylizeRequest``. Parameter names and kinds come from the proto descriptor, so the SDK,
the CLI flags and the server cannot disagree about what a parameter is called or accepts."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import grpc
from google.protobuf.descriptor import FieldDescriptor
from styletx_proto.v1 import styletx_pb2 as pb

from ._errors import StyletxError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["PARAMS", "ImageInput", "StyleInput", "build_request", "enum_choices", "param_kind"]

PARAMS = pb.StylizeParams.DESCRIPTOR
ImageInput = Union[bytes, str, "os.PathLike[str]", "Image.Image"]
#: A style image, or ``(image, weight)``.
StyleInput = Union[ImageInput, tuple[ImageInput, float]]  # noqa: UP007
_FORMATS: dict[str, Any] = {"png": pb.OUTPUT_FORMAT_PNG, "jpeg": pb.OUTPUT_FORMAT_JPEG,
                            "jpg": pb.OUTPUT_FORMAT_JPEG, "tiff16": pb.OUTPUT_FORMAT_TIFF16}
_MODES: dict[str, Any] = {v.name.removeprefix("MODE_").lower(): v.number
                          for v in pb.Mode.DESCRIPTOR.values if v.number}


def enum_choices(field: FieldDescriptor) -> dict[str, int]:
    """``{"lbfgs": 1, "adam": 2}`` for ``optimizer`` (the UNSPECIFIED value means 'server default')."""
    enum = field.enum_type
    assert enum is not None
    prefix = enum.values[0].name.removesuffix("UNSPECIFIED")
    return {v.name.removeprefix(prefix).lower(): v.number for v in enum.values if v.number}


def param_kind(field: FieldDescriptor) -> type:
    """The Python type of one value of ``field`` (``str`` for enums)."""
    if field.enum_type is not None or field.type == FieldDescriptor.TYPE_STRING:
        return str
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float
    return int


def image_bytes(image: ImageInput) -> bytes:
    """Encoded bytes as given (never re-encoded), a file's bytes, or a PIL image as PNG."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _params(values: Mapping[str, Any]) -> pb.StylizeParams:
    params = pb.StylizeParams()
    for name, value in values.items():
        field = PARAMS.fields_by_name.get(name)
        if field is None:
            raise TypeError(f"unknown parameter {name!r}; known: {', '.join(sorted(PARAMS.fields_by_name))}")
        if value is None:
            continue
        if field.enum_type is not None:
            choices = enum_choices(field)
            if value not in choices:
                raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"params.{name}: must be one of {', '.join(choices)}; got {value!r}",
                                   {"styletx-field": f"params.{name}"})
            setattr(params, name, choices[value])
        elif field.is_repeated:
            getattr(params, name).extend(value)
        else:
            setattr(params, name, value)
    return params


def build_request(content: ImageInput, styles: Sequence[StyleInput], *, output_format: str = "png",
                  preview_format: str | None = None, preview_max_side: int | None = None,
                  mode: str = "optimize",
                  model_name: str = "", preset: str = "", variation: bool = False,
                  strength: float | None = None, processing_size: int | None = None,
                  tile: int | None = None, overlap: int | None = None, skip_quality: bool = False,
                  request_id: str = "", style_masks: Sequence[ImageInput | None] = (),
                  style_own_layers: Sequence[Sequence[str] | None] = (),
                  style_own_layer_weights: Sequence[Sequence[float] | None] = (),
                  content_strength: ImageInput | None = None, **params: Any) -> pb.StylizeRequest:
    """The request for ``content`` and ``styles``; ``params`` are StylizeParams fields by name.

    ``strength`` and ``processing_size`` are the feed-forward modes' options (FastParams), ``tile`` and
    ``overlap`` CYCLEGAN's; ``skip_quality`` saves the server its scoring pass; ``request_id`` is the
    idempotency key (the client draws one when empty). Spatial and scale control, per style in order (``None``
    or a shorter list: none): ``style_masks`` (greyscale images: where each style applies, ``Style.mask``),
    ``style_own_layers`` and ``style_own_layer_weights`` (``Style.layers``/``layer_weights``);
    ``content_strength`` is a greyscale map scaling the content loss per pixel.
    """
    for name, values in (("style_masks", style_masks), ("style_own_layers", style_own_layers),
                         ("style_own_layer_weights", style_own_layer_weights)):
        if len(values) > len(styles):
            raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT, f"styles: {len(values)} {name} for "
                               f"{len(styles)} styles", {"styletx-field": "styles"})
    wire_styles = []
    for index, style in enumerate(styles):
        image, weight = style if isinstance(style, tuple) else (style, None)
        mask = style_masks[index] if index < len(style_masks) else None
        layers = style_own_layers[index] if index < len(style_own_layers) else None
        layer_weights = style_own_layer_weights[index] if index < len(style_own_layer_weights) else None
        wire_styles.append(pb.Style(image=image_bytes(image), weight=weight,
                                    mask=image_bytes(mask) if mask is not None else b"",
                                    layers=layers or (), layer_weights=layer_weights or ()))
    preview_enum = _FORMATS[preview_format] if preview_format else pb.OUTPUT_FORMAT_UNSPECIFIED
    preview = pb.PreviewSettings(max_side=preview_max_side, format=preview_enum)
    if output_format not in _FORMATS or mode not in _MODES:
        bad = "output_format" if output_format not in _FORMATS else "mode"
        raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT, f"{bad}: unknown value", {"styletx-field": bad})
    return pb.StylizeRequest(content=image_bytes(content), styles=wire_styles, params=_params(params),
                             output_format=_FORMATS[output_format], preview=preview, mode=_MODES[mode],
                             model_name=model_name, preset=preset, variation=variation,
                             fast=pb.FastParams(strength=strength, processing_size=processing_size),
                             cyclegan=pb.CycleGANParams(tile=tile, overlap=overlap), skip_quality=skip_quality,
                             request_id=request_id,
                             content_strength=image_bytes(content_strength) if content_strength is not None else b"")
