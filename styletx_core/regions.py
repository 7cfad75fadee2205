"""Spatial and scale control (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer").

Each style may carry a :class:`StyleControl`: a soft mask (its style loss applies only where the mask is, through
guided Gram matrices or mask-weighted W2 statistics) and its own layers and layer weights (one style gives the
large-scale structure, another the fine texture, §5 of the paper). A content-strength map scales the content
loss per pixel.

The styles are grouped by region: every masked style is a region of its own; the unmasked styles share the rest
of the image (``1 − Σ masks``, or all of it when no style is masked) and are blended there layer by layer as
before. Each group's terms are ordinary loss modules with the guide in a buffer (:func:`style_terms`), so any
engine that builds per-job loss modules — the batched one too — gets regions by calling :func:`style_terms`
with a :class:`RegionPlan` and a :class:`RegionalBalance`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from PIL import Image, ImageFilter

from .balance import StyleBalance
from .errors import OptionError
from .imageio import pil_to_tensor, tensor_to_pil
from .losses import LAYOUT_SIGMA_SHARE, ContentLoss, LayerApply, LayoutLoss, Scale, guide_at
from .options import KNOWN_LAYERS, StylizeOptions
from .targets import Stats, TargetCache, blend_statistics, energy_factors, style_loss, style_statistics
from .vgg import VGGFeatures

__all__ = [
    "FEATHER",
    "MIN_COVERAGE",
    "RegionPlan",
    "RegionalBalance",
    "StyleControl",
    "StyleGroup",
    "composite",
    "content_loss",
    "layout_loss",
    "load_mask",
    "regional_composite",
    "regional_start",
    "style_terms",
]

#: What a feed-forward model's ``picture`` takes per style (a style image, or a preset's name).
StyleT = TypeVar("StyleT")

#: A mask must cover at least this many output pixels (its mass, Σ values) to be a region at all.
MIN_COVERAGE = 1.0
#: Name of the group of unmasked styles; its balance keys are the bare layer names (as without regions).
SHARED = ""


@dataclass(frozen=True)
class StyleControl:
    """Where and at which scales one style applies (every field optional).

    Attributes:
        mask: greyscale image of any size (resized to the output; 0 = not here, 1 = fully, soft values blend).
        layers: the style layers of this style (``None``: ``opts.style_layers``).
        layer_weights: relative weight per layer of ``layers`` (``None``: equal).
    """

    mask: Image.Image | None = None
    layers: tuple[str, ...] | None = None
    layer_weights: tuple[float, ...] | None = None

    def validate(self, index: int, opts: StylizeOptions) -> None:
        """Raise :class:`OptionError` naming ``styles[index].layers`` / ``.layer_weights`` when they are bad."""
        field_name = f"styles[{index}].layers"
        known = KNOWN_LAYERS[opts.model]
        if self.layers is not None:
            unknown = [layer for layer in self.layers if layer not in known]
            if not self.layers or unknown:
                raise OptionError(field_name, f"{opts.model} has no layer(s) {unknown or '(none given)'}")
        count = len(self.layers or opts.style_layers)
        # The options' own check, so that a style's weights obey the same rules as params.style_layer_weights.
        StylizeOptions._validate_weights(f"styles[{index}].layer_weights", self.layer_weights, count)


def load_mask(image: Image.Image, size: tuple[int, int], field_name: str) -> torch.Tensor:
    """A greyscale mask resized to ``size`` (width, height) as a 1×1×H×W tensor in [0, 1].

    Raises :class:`OptionError` (``field_name``) when it is blank or covers less than :data:`MIN_COVERAGE`
    pixels at that size (a speck that vanishes when resized).
    """
    grey = image.convert("L")
    if grey.getextrema()[1] == 0:
        raise OptionError(field_name, "the mask is blank (all black): it selects no region")
    tensor = pil_to_tensor(grey.resize(size, Image.Resampling.BILINEAR))[:, :1]
    if float(tensor.sum()) < MIN_COVERAGE:
        raise OptionError(field_name, f"the mask covers nothing at the working size {size[0]}×{size[1]}")
    return tensor


@dataclass
class StyleGroup:
    """Styles that share one region: their statistics are blended per layer and matched inside ``mask``."""

    name: str
    styles: list[int]
    mask: torch.Tensor | None
    """1×1×H×W at the output size; ``None``: the whole image (exactly the unguided loss)."""


@dataclass
class RegionPlan:
    """What the controls of one job mean for its losses: the style groups, layers and content-strength map."""

    groups: list[StyleGroup]
    layers: dict[int, tuple[str, ...]]
    layer_weights: dict[int, list[float]]
    content_strength: torch.Tensor | None = None
    blend_weights: list[float] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        controls: Sequence[StyleControl | None] | None,
        style_count: int,
        size: tuple[int, int],
        opts: StylizeOptions,
        content_strength: Image.Image | None = None,
        device: torch.device | str = "cpu",
    ) -> RegionPlan:
        """Validate the controls against ``opts`` and resize the masks to the output ``size``."""
        controls = list(controls or [])
        if len(controls) > style_count:
            raise OptionError("styles", f"{len(controls)} style controls for {style_count} styles")
        controls += [None] * (style_count - len(controls))
        layers: dict[int, tuple[str, ...]] = {}
        weights: dict[int, list[float]] = {}
        masks: dict[int, torch.Tensor] = {}
        for index, control in enumerate(controls):
            control = control or StyleControl()
            control.validate(index, opts)
            layers[index] = control.layers or opts.style_layers
            default = opts.style_layer_weights if control.layers is None else None
            weights[index] = _normalised(control.layer_weights or default or [1.0] * len(layers[index]))
            if control.mask is not None:
                masks[index] = load_mask(control.mask, size, f"styles[{index}].mask").to(device)
        strength = None
        if content_strength is not None:
            grey = content_strength.convert("L").resize(size, Image.Resampling.BILINEAR)
            strength = pil_to_tensor(grey)[:, :1].to(device)
        blend = list(opts.style_blend_weights or [1.0] * style_count)
        return cls(_groups(masks, style_count), layers, weights, strength, blend)

    @property
    def all_layers(self) -> tuple[str, ...]:
        """Every style layer some style uses (the network must tap them all)."""
        return tuple(dict.fromkeys(layer for names in self.layers.values() for layer in names))

    @property
    def masked(self) -> bool:
        return any(group.mask is not None for group in self.groups)

    def group_layers(self, group: StyleGroup) -> dict[str, float]:
        """Per layer any of the group's styles uses: Σ blend weight × the style's layer weight / Σ blend weight."""
        total = sum(self.blend_weights[i] for i in group.styles)
        weights: dict[str, float] = {}
        for index in group.styles:
            for layer, weight in zip(self.layers[index], self.layer_weights[index], strict=True):
                weights[layer] = weights.get(layer, 0.0) + self.blend_weights[index] * weight
        return {layer: weight / total for layer, weight in weights.items()}

    def balance(self, tolerance: float, loss_kind: str = "gram") -> RegionalBalance:
        """The per-group balances; ``loss_kind`` (the ``style_loss`` option) says which layers the W2 distance
        measures, per-style layers included (see :class:`StyleBalance`)."""
        layers = {group.name: list(self.group_layers(group)) for group in self.groups}
        return RegionalBalance(layers, tolerance, loss_kind)


def _groups(masks: Mapping[int, torch.Tensor], style_count: int) -> list[StyleGroup]:
    """Masked styles one group each; the unmasked ones share what the masks leave (dropped if that is nothing)."""
    groups = [StyleGroup(f"styles[{i}]", [i], mask) for i, mask in masks.items()]
    shared = [i for i in range(style_count) if i not in masks]
    if not shared:
        return groups
    if not masks:
        return [StyleGroup(SHARED, shared, None)]
    covered = torch.stack(list(masks.values())).sum(0)
    rest = (1 - covered).clamp(0, 1)
    if float(rest.sum()) >= MIN_COVERAGE:
        groups.append(StyleGroup(SHARED, shared, rest))
    return groups


def _normalised(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


@dataclass
class RegionalBalance:
    """One :class:`StyleBalance` per style group; keys are ``layer`` (shared group) or ``styles[i]/layer``."""

    layers: dict[str, list[str]]
    tolerance: float
    loss_kind: str = "gram"
    balances: dict[str, StyleBalance] = field(init=False)
    measured: list[dict[str, float]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.balances = {
            name: StyleBalance(layers, tolerance=self.tolerance, loss_kind=self.loss_kind)
            for name, layers in self.layers.items()
        }

    @staticmethod
    def key(group: str, layer: str) -> str:
        return layer if group == SHARED else f"{group}/{layer}"

    def multiplier(self, group: str, layer: str) -> float:
        return self.balances[group].multipliers[layer]

    @property
    def multipliers(self) -> dict[str, float]:
        return {
            self.key(group, layer): value
            for group, balance in self.balances.items()
            for layer, value in balance.multipliers.items()
        }

    def update(self, errors: Mapping[str, float]) -> None:
        """Record one scale's errors (keyed as :meth:`key`) and move each group's multipliers."""
        self.measured.append(dict(errors))
        for group, balance in self.balances.items():
            balance.update({layer: errors[self.key(group, layer)] for layer in balance.layers})


def style_terms(
    cache: TargetCache[Stats],
    net: VGGFeatures,
    styles: Sequence[torch.Tensor],
    plan: RegionPlan,
    opts: StylizeOptions,
    style_size: int,
    content_features: Mapping[str, torch.Tensor],
    balance: RegionalBalance,
) -> list[Scale]:
    """The weighted style terms of one scale, every group's (see the module docstring).

    A term's weight is the option's × the layer's weight × its energy factor × the balance multiplier × the share
    of the image the group's region covers at that layer: the guided loss is relative to the region's own
    statistics, so without the share a small region would pull as hard as the whole image (each pixel of it far
    harder than the content loss, which is over the whole image). An all-ones mask has share 1: no mask.
    """
    terms = []
    for group in plan.groups:
        stats = [style_statistics(cache, net, styles[i], opts, style_size, plan.layers[i]) for i in group.styles]
        blended = blend_statistics(stats, [plan.blend_weights[i] for i in group.styles])
        layer_weights = plan.group_layers(group)
        guides = _layer_guides(group.mask, content_features, layer_weights)
        targets = {layer: style_loss(blended[layer], guides.get(layer)) for layer in layer_weights}
        energy = energy_factors(
            targets, content_features, list(layer_weights), opts.style_energy_power, guides, opts.style_energy_floor
        )
        for layer, weight in layer_weights.items():
            share = 1.0 if layer not in guides else float(guides[layer].mean())
            value = opts.style_weight * weight * energy[layer] * balance.multiplier(group.name, layer) * share
            terms.append(Scale(LayerApply(targets[layer], layer, RegionalBalance.key(group.name, layer)), value))
    return terms


def _layer_guides(
    mask: torch.Tensor | None, features: Mapping[str, torch.Tensor], layers: Mapping[str, float]
) -> dict[str, torch.Tensor]:
    """The mask pyramid of one scale: the mask at each layer's resolution (empty without a mask)."""
    if mask is None:
        return {}
    return {layer: guide_at(mask, *features[layer].shape[-2:]) for layer in layers}


def content_loss(target: torch.Tensor, plan: RegionPlan) -> ContentLoss:
    """The content loss of one layer, weighted per position by the content-strength map at that layer's
    resolution (none: the plain loss)."""
    if plan.content_strength is None:
        return ContentLoss(target)
    return ContentLoss(target, strength=guide_at(plan.content_strength, *target.shape[-2:]))


def layout_loss(content: torch.Tensor, plan: RegionPlan) -> LayoutLoss:
    """The layout term at ``content``'s size (σ: ``LAYOUT_SIGMA_SHARE`` of its long side), weighted per pixel by the
    content-strength map like the content loss: where a face is kept photographic, its composition is too."""
    sigma = max(content.shape[-2:]) * LAYOUT_SIGMA_SHARE
    if plan.content_strength is None:
        return LayoutLoss(content, sigma)
    return LayoutLoss(content, sigma, strength=guide_at(plan.content_strength, *content.shape[-2:]))


def regional_start(
    plan: RegionPlan,
    content: torch.Tensor,
    init: Callable[[torch.Tensor], torch.Tensor],
    styles: Sequence[torch.Tensor],
) -> torch.Tensor:
    """The start image of a masked run at ``content``'s size: ``init(style)`` of each masked style in its region,
    the content where no mask is (the unmasked styles then pull it their way)."""
    height, width = content.shape[-2:]
    regions = [(group.styles[0], group.mask) for group in plan.groups if group.mask is not None]
    images = [init(styles[index]).to(content) for index, _ in regions]
    masks = [guide_at(mask, height, width) for _, mask in regions if mask is not None]
    return composite(content, images, masks).clamp(0, 1)


def composite(
    base: torch.Tensor, images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], feather: float = 0.0
) -> torch.Tensor:
    """Σ mₖ·imageₖ + r·base over Σ mₖ + r, with r = 1 − Σ mₖ clamped to [0, 1]: each image in its region,
    overlaps blended by the mask values, ``base`` where no mask is. ``feather`` (pixels) blurs the masks first so
    that per-region results of a feed-forward model meet without seams. All tensors N×C×H×W of one size."""
    if feather > 0:
        masks = [_feathered(mask, feather) for mask in masks]
    covered = sum(masks, torch.zeros_like(masks[0]))
    rest = (1 - covered).clamp(0, 1)
    blended = sum((mask * image for mask, image in zip(masks, images, strict=True)), rest * base)
    return blended / (covered + rest).clamp_min(1e-6)


def _feathered(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """``mask`` blurred by a Gaussian of ``radius`` pixels (Pillow's filter, on the 8-bit mask)."""
    blurred = tensor_to_pil(mask.expand(-1, 3, -1, -1)).convert("L").filter(ImageFilter.GaussianBlur(radius))
    return pil_to_tensor(blurred)[:, :1].to(mask)


#: Feathering of per-region feed-forward composites, as a share of the output's long side.
FEATHER = 0.01


def regional_composite(
    content: Image.Image,
    styles: Sequence[StyleT],
    masks: Mapping[int, Image.Image],
    picture: Callable[[list[StyleT], list[float] | None], Image.Image],
    weights: Sequence[float] | None = None,
) -> Image.Image:
    """A feed-forward model's result per region: ``picture(styles, weights)`` once per masked style and once for
    the unmasked ones (the base; the content where every style is masked), composited with feathered edges.

    A style is whatever ``picture`` takes: a style image (FAST) or a preset's name (PRESET)."""
    shared = [i for i in range(len(styles)) if i not in masks]
    images = {i: pil_to_tensor(picture([styles[i]], None)) for i in masks}
    height, width = next(iter(images.values())).shape[-2:]
    size = (int(width), int(height))
    if shared:
        chosen = [weights[i] for i in shared] if weights is not None else None
        base = pil_to_tensor(picture([styles[i] for i in shared], chosen).resize(size))
    else:
        base = pil_to_tensor(content.resize(size, Image.Resampling.LANCZOS))
    grey = [pil_to_tensor(masks[i].convert("L").resize(size, Image.Resampling.BILINEAR))[:, :1] for i in masks]
    result = composite(base, [images[i] for i in masks], grey, feather=FEATHER * max(size))
    return tensor_to_pil(result)
