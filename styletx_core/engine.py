"""The Gatys et al. optimisation, coarse to fine: ``StyleTransfer.stylize(content, styles, opts, callback)``.

The loop is split into small steps — :meth:`_init_image`, :meth:`_build_losses`, :func:`_make_optimizer`,
:meth:`_run_scale` — and picks initialisations and optimisers from registries rather than if/elif chains.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import random
import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from PIL import Image
from torch.nn import functional as F

from . import color
from .errors import EngineError, OptionError, ResourceLimitError
from .geometry import MIN_SIDE, check_geometry, fit_long_side
from .imageio import pil_to_tensor, tensor_to_pil
from .losses import LayerApply, Scale, SumLoss, TVLoss
from .memory import ScalePlan, available_memory, plan_scale, scale_allocator, tune_allocator
from .options import StylizeOptions
from .progress import Callback, Iterate, StylizeResult
from .regions import RegionalBalance, RegionPlan, StyleControl, content_loss, layout_loss, regional_start
from .regions import style_terms as style_terms_for
from .schedule import scale_iterations, total_iterations
from .targets import Stats, TargetCache
from .vgg import FEATURE_LAYERS, VGGFeatures, layer_names
from .weights import LoadedWeights, load_vgg_weights

__all__ = [
    "INITS", "MIN_SIDE", "OPTIMIZERS", "NumericalError", "StyleTransfer", "check_geometry", "cpu_bf16_speedup",
    "native_bf16",
]

_LOGGER = logging.getLogger(__name__)


class NumericalError(EngineError):
    """The loss stopped being finite: the job cannot continue."""


def _init_content(content: torch.Tensor, style: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return content.clone()


def _init_noise(content: torch.Tensor, style: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # Mid-grey noise of small amplitude, as in neural-style's "-init random" (scaled for a 0–1 image).
    return (0.5 + 0.1 * torch.randn(content.shape, generator=gen)).clamp(0, 1).to(content)


def _init_palette(content: torch.Tensor, style: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # The content recoloured to the style's colour mean and covariance: the layout of the photo in the palette
    # of the painting, so that the optimisation need not drag every pixel's colour across (muted paintings).
    return color.match_color(content, style).clamp(0, 1)


def _init_style(content: torch.Tensor, style: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return F.interpolate(style, size=content.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)


INITS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]] = {
    "content": _init_content,
    "noise": _init_noise,
    "style": _init_style,
    "palette": _init_palette,
}



#: Share of the free memory a job plans to use when no budget is set: the estimate has no allocator slack.
MEMORY_HEADROOM = 0.85
#: Networks kept per engine: the default layer set per model and pooling, plus a few requested other sets.
MAX_NETWORKS = 6
#: L-BFGS history pairs when memory allows (the memory plan may keep fewer at large sizes).
LBFGS_HISTORY = 50
#: A batch on a GPU reads its loss values every this many iterations (and at each scale's first and last
#: iteration and on preview iterations): each read waits for the device to drain, which at batch 1 costs as
#: much as the iteration.
GPU_SYNC_EVERY = 10


def _lbfgs(image: torch.Tensor, opts: StylizeOptions, plan: ScalePlan) -> torch.optim.Optimizer:
    # One closure evaluation per step so that every iteration is reported and can be cancelled; the history
    # survives between step() calls, so this is the same algorithm as one long L-BFGS run (neural-style's).
    return torch.optim.LBFGS(
        [image], lr=1.0, max_iter=1, history_size=plan.history_size, tolerance_grad=0.0, tolerance_change=0.0
    )


def _adam(image: torch.Tensor, opts: StylizeOptions, plan: ScalePlan) -> torch.optim.Optimizer:
    return torch.optim.Adam([image], lr=opts.learning_rate, betas=(0.9, 0.99))


OPTIMIZERS: dict[str, Callable[[torch.Tensor, StylizeOptions, ScalePlan], torch.optim.Optimizer]] = {
    "lbfgs": _lbfgs,
    "adam": _adam,
}


@dataclass
class _Run:
    """Book-keeping shared by the scales of one run (progress, ETA, history)."""

    opts: StylizeOptions
    sizes: list[tuple[int, int]]
    plans: list[ScalePlan]
    callback: Callback | None
    start: float = field(default_factory=time.perf_counter)
    done: int = 0
    work_done: float = 0.0
    loop_time: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def iterations_at(self, scale: int) -> int:
        return scale_iterations(self.opts)[scale]

    @property
    def total(self) -> int:
        return total_iterations(self.opts)

    @property
    def total_work(self) -> float:
        return sum(self.iterations_at(s) * w * h for s, (w, h) in enumerate(self.sizes))

    def equivalent_iterations(self) -> float:
        final = self.sizes[-1][0] * self.sizes[-1][1]
        return sum(self.iterations_at(s) * w * h / final for s, (w, h) in enumerate(self.sizes))


@dataclass
class _Job:
    """One job's request and run state, set up by :meth:`StyleTransfer.prepare_job` before any work."""

    content: Image.Image
    seed: int
    generator: torch.Generator
    content_t: torch.Tensor
    style_ts: list[torch.Tensor]
    run: _Run
    balance: RegionalBalance
    init_image: Image.Image | None
    extra_losses: Mapping[str, torch.nn.Module]
    plan: RegionPlan

    @property
    def layers(self) -> tuple[str, ...]:
        """The network layers this job reads: content layers and every region's style layers."""
        return (*self.run.opts.content_layers, *self.plan.all_layers)


class StyleTransfer:
    """Holds the networks, weights and style-target cache; stylises images on one device.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …
        weights: weights source for both VGGs (``"auto"``, ``"offline"``, ``"torchvision"``, ``"file"``).
        weights_path: a .safetensors/.pth file for ``weights="file"`` (server-side setting, never a request's).
        max_pixels: refuse outputs above this many pixels with :class:`ResourceLimitError`.
        memory_budget: bytes one job may use (``None``: what the device has free when the job starts); the
            memory plan (:mod:`styletx_core.memory`) fits each scale into it or refuses the job up front.
        sync_every: how often a batch (:mod:`styletx_core.batch`) reads its loss values back to the host
            (``None``: every iteration on the CPU, where a read costs nothing, every
            :data:`GPU_SYNC_EVERY` on a GPU, where each read stalls the launch queue). Between reads the
            callback still runs every iteration (cancellation stays immediate) with the last values read.
    """

    def __init__(
        self,
        device: str = "auto",
        weights: str = "auto",
        weights_path: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_pixels: int = 4096 * 4096,
        target_cache_size: int = 64,
        memory_budget: int | None = None,
        sync_every: int | None = None,
    ) -> None:
        self.device = torch.device(
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else "cpu"
            if device == "auto"
            else device
        )
        self.weights_source = weights
        self.weights_path = weights_path
        self.cache_dir = cache_dir
        self.max_pixels = max_pixels
        self.memory_budget = memory_budget
        self.sync_every = sync_every or (1 if self.device.type == "cpu" else GPU_SYNC_EVERY)
        self._weights: dict[str, LoadedWeights] = {}
        self._networks: dict[tuple[str, str, tuple[str, ...]], VGGFeatures] = {}
        self._networks_lock = threading.Lock()
        self.targets: TargetCache[Stats] = TargetCache(target_cache_size)
        tune_allocator()

    def weights_for(self, arch: str) -> LoadedWeights:
        if arch not in self._weights:
            self._weights[arch] = load_vgg_weights(
                arch, self.weights_source, self.weights_path, self.cache_dir
            )
        return self._weights[arch]

    def network(self, arch: str, pooling: str, layers: Sequence[str] = ()) -> VGGFeatures:
        """The extractor for ``arch``/``pooling`` returning :data:`FEATURE_LAYERS` plus ``layers``, truncated
        after the deepest of them (built once and kept; the few networks for other layer sets are an LRU)."""
        wanted = set(FEATURE_LAYERS) | set(layers)
        names = tuple(name for name in layer_names(arch) if name in wanted)
        key = (arch, pooling, names)
        with self._networks_lock:  # the server's workers share one engine
            net = self._networks.pop(key, None)
            if net is None:
                weights = self.weights_for(arch)
                net = VGGFeatures(arch, weights.state_dict, weights.preprocessing, names, pooling).to(self.device)
            self._networks[key] = net  # most recently used last
            while len(self._networks) > MAX_NETWORKS:
                self._networks.pop(next(iter(self._networks)))
            return net

    def target_cache_info(self) -> dict[str, int]:
        return self.targets.info()

    def stylize(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        opts: StylizeOptions | None = None,
        callback: Callback | None = None,
        init_image: Image.Image | None = None,
        extra_losses: Mapping[str, torch.nn.Module] | None = None,
        controls: Sequence[StyleControl | None] | None = None,
        content_strength: Image.Image | None = None,
    ) -> StylizeResult:
        """Stylise ``content`` with ``styles`` (blended by ``opts.style_blend_weights``).

        ``callback`` receives an :class:`Iterate` after every iteration and may raise
        :class:`~styletx_core.errors.Cancelled`. ``init_image`` (e.g. a fast feed-forward result or the
        previous video frame) replaces ``opts.init``. ``extra_losses`` adds named terms applied to the image
        itself at every scale (e.g. the temporal loss of Ruder et al. for video); each must accept any size.
        ``controls`` (one per style, or fewer) give styles a region mask and their own layers; ``content_strength``
        (greyscale, 0–1) scales the content loss per pixel — see :mod:`styletx_core.regions`.
        """
        job = self.prepare_job(content, styles, opts or StylizeOptions(), callback, init_image, extra_losses,
                               controls, content_strength)
        opts = job.run.opts
        # A shallow copy shares the weights but has its own ``checkpoint`` switch: jobs running side by side in
        # the server's workers each follow their own memory plan.
        net = copy.copy(self.network(opts.model, opts.pooling, job.layers))
        image = None
        for index, size in enumerate(job.run.sizes):
            image = self._init_image(image, job.content_t, job.style_ts, job.init_image, size, job.generator, opts,
                                     job.plan)
            losses = self._build_losses(net, job.content_t, job.style_ts, size, opts, job.extra_losses, job.balance,
                                        job.plan)
            net.checkpoint = job.run.plans[index].checkpoint
            with scale_allocator(job.run.plans[index]):
                image = self._run_scale(net, image, losses, index, job.run)
                job.balance.update(self._style_errors(net, image, losses, opts))
        assert image is not None
        return self.finish_job(job, image)

    def prepare_job(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        opts: StylizeOptions,
        callback: Callback | None = None,
        init_image: Image.Image | None = None,
        extra_losses: Mapping[str, torch.nn.Module] | None = None,
        controls: Sequence[StyleControl | None] | None = None,
        content_strength: Image.Image | None = None,
    ) -> _Job:
        """Check a request and set up its run (seed, device tensors, sizes, memory plan, regions, balance): before
        any optimisation, for :meth:`stylize` and for a batch (:mod:`styletx_core.batch`) alike."""
        self._check_request(content, styles, opts)
        final_size = fit_long_side(content.size, opts.size)
        plan = RegionPlan.build(controls, len(styles), final_size, opts, content_strength, self.device)
        seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
        generator = torch.Generator().manual_seed(seed)  # per job: never reseed torch's global RNG
        content_t, style_ts = self._prepare_colors(content, styles, opts)
        sizes = [fit_long_side(content.size, s) for s in opts.scales()]
        run = _Run(opts, sizes, self.memory_plan(sizes, opts), callback)
        balance = plan.balance(opts.style_tolerance, opts.style_loss)
        return _Job(content, seed, generator, content_t, style_ts, run, balance, init_image, extra_losses or {}, plan)

    def finish_job(self, job: _Job, image: torch.Tensor) -> StylizeResult:
        """The result of a job whose last scale ended at ``image`` (colour put back where asked)."""
        run, balance = job.run, job.balance
        if run.opts.preserve_color == "luminance":
            image = color.recombine_luminance(image, pil_to_tensor(job.content).to(self.device))
        return StylizeResult(
            image=tensor_to_pil(image),
            seed=job.seed,
            iterations=run.done,
            equivalent_iterations=run.equivalent_iterations(),
            elapsed=time.perf_counter() - run.start,
            losses=dict(run.history[-1]) if run.history else {},
            history=run.history,
            memory_plan=[plan.as_dict() for plan in run.plans],
            style_errors=balance.measured[-1] if balance.measured else {},
            style_multipliers=dict(balance.multipliers),
        )

    def precision(self, opts: StylizeOptions) -> str:
        """The precision a job runs at: ``opts.precision``, with ``auto`` resolved for this device.

        ``auto`` is bf16 autocast (Gram matrices and losses stay fp32) where the hardware runs bf16 faster
        (:func:`native_bf16`): 1.8× faster end to end at 512 px on an AMD Zen 4 CPU, with every quality measure
        within 0.3 % of fp32's (bench/perf.py, section bf16). Elsewhere bf16 is emulated or slower: fp32.
        """
        if opts.precision != "auto":
            return opts.precision
        return "bf16" if native_bf16(self.device) else "fp32"

    def memory_plan(
        self, sizes: Sequence[tuple[int, int]], opts: StylizeOptions, batch: int = 1
    ) -> list[ScalePlan]:
        """One plan per scale (for ``batch`` such jobs optimised together); raises :class:`ResourceLimitError`
        (before any work) if a scale cannot fit."""
        budget = self.memory_budget or int(MEMORY_HEADROOM * available_memory(self.device))
        precision = self.precision(opts)
        return [
            plan_scale(opts.model, w, h, precision, opts.optimizer, LBFGS_HISTORY, budget, batch=batch)
            for w, h in sizes
        ]

    def _check_request(
        self, content: Image.Image, styles: Sequence[Image.Image], opts: StylizeOptions
    ) -> None:
        if not styles:
            raise EngineError("at least one style image is needed")
        weights = opts.style_blend_weights
        if weights is not None and len(weights) != len(styles):
            raise OptionError("style_blend_weights", f"{len(weights)} weights for {len(styles)} styles")
        check_geometry(content.size, [style.size for style in styles], opts)
        width, height = fit_long_side(content.size, opts.size)
        if width * height > self.max_pixels:
            raise ResourceLimitError(
                f"output {width}×{height} has {width * height} pixels; this server allows {self.max_pixels}"
            )

    def _prepare_colors(
        self, content: Image.Image, styles: Sequence[Image.Image], opts: StylizeOptions
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full-resolution tensors (on the device) after colour preservation's pre-processing.

        ``luminance`` needs none: the optimisation runs in colour and :meth:`stylize` puts the content's chroma
        back at the end (neural-style's ``-original_colors``). Optimising grey images instead (Gatys et al.'s
        luminance-only transfer) kept far more of the photo than neural-style does: content distance 0.46–0.87
        against its 0.99 on tubingen × Starry Night, and a lower style-embedding cosine.
        """
        content_t = pil_to_tensor(content).to(self.device)
        style_ts = [pil_to_tensor(style).to(self.device) for style in styles]
        if opts.preserve_color == "histogram":
            style_ts = [color.match_color(s, content_t) for s in style_ts]
        return content_t, style_ts

    def _init_image(
        self,
        previous: torch.Tensor | None,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        init_image: Image.Image | None,
        size: tuple[int, int],
        generator: torch.Generator,
        opts: StylizeOptions,
        plan: RegionPlan,
    ) -> torch.Tensor:
        """The starting image of a scale: the previous scale's result upsampled, else the chosen init (with
        regions, each region's style's init in its region and the content where no style applies)."""
        if previous is not None:
            return _resize(previous, size).clamp(0, 1)
        content_s = _resize(content, size)
        if init_image is not None:
            return _resize(pil_to_tensor(init_image).to(self.device), size).clamp(0, 1)
        init = INITS[opts.init]
        if not plan.masked:
            return init(content_s.cpu(), styles[0].cpu(), generator).to(self.device)
        return regional_start(plan, content_s, lambda style: init(content_s.cpu(), style.cpu(), generator), styles)

    def _build_losses(
        self,
        net: VGGFeatures,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        size: tuple[int, int],
        opts: StylizeOptions,
        extra: Mapping[str, torch.nn.Module],
        balance: RegionalBalance,
        plan: RegionPlan,
    ) -> SumLoss:
        """Content, style and TV terms for one scale; style targets come from the cache when possible.

        The layout term (``opts.layout_weight``; :class:`~styletx_core.losses.LayoutLoss`) holds the photo's
        blurred luminance, its σ a fixed share of the scale's long side.
        A style layer's weight is the option's, × its energy factor (vivid styles pull harder), × the balance's
        multiplier (what the previous scales measured): see :mod:`styletx_core.balance`. Regions and per-style
        layers shape the style terms (:func:`styletx_core.regions.style_terms`); the masks follow each scale.
        """
        scaled = _resize(content, size)
        with torch.no_grad():
            content_features = net(scaled)
        content_terms = [
            Scale(
                LayerApply(content_loss(content_features[layer], plan), layer),
                opts.content_weight / len(opts.content_layers),
            )
            for layer in opts.content_layers
        ]
        style_size = max(16, round(max(size) * opts.style_scale))
        style_terms = style_terms_for(self.targets, net, styles, plan, opts, style_size, content_features, balance)
        tv_terms = [Scale(LayerApply(TVLoss(), None), opts.tv_weight)]
        groups: dict[str, Sequence[torch.nn.Module]] = {"content": content_terms, "style": style_terms, "tv": tv_terms}
        if opts.layout_weight > 0:
            groups["layout"] = [Scale(LayerApply(layout_loss(scaled, plan), None), opts.layout_weight)]
        groups.update({name: [LayerApply(module, None)] for name, module in extra.items()})
        return SumLoss({name: torch.nn.ModuleList(terms) for name, terms in groups.items()}).to(self.device)

    def _run_scale(
        self, net: VGGFeatures, image: torch.Tensor, losses: SumLoss, index: int, run: _Run
    ) -> torch.Tensor:
        """Optimise one scale; returns the image (the EMA average for Adam)."""
        opts = run.opts
        image = image.detach().contiguous().requires_grad_(True)
        optimizer = OPTIMIZERS[opts.optimizer](image, opts, run.plans[index])
        average = _EMA(image, opts.ema_decay) if opts.optimizer == "adam" else None
        last: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            with self._autocast(opts):
                total, parts = losses(net(image), image)
            total.backward()
            last.update({name: part.detach() for name, part in parts.items()}, total=total.detach())
            return total

        best = _Best()
        for _ in range(run.iterations_at(index)):
            started = time.perf_counter()
            before = image.detach().clone() if average is None else image
            optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS needs the tensor, not a float
            if average is not None:
                with torch.no_grad():
                    image.clamp_(0, 1)
                average.update(image)
            loss = self._report(run, index, image if average is None else average.value, last, started)
            best.offer(loss, before)
        result = average.value if average is not None else best.image if best.image is not None else image
        return result.detach().clamp(0, 1)

    def _style_errors(
        self, net: VGGFeatures, image: torch.Tensor, losses: SumLoss, opts: StylizeOptions
    ) -> dict[str, float]:
        """Each style layer's relative error on ``image`` (unweighted; one forward pass)."""
        with torch.no_grad(), self._autocast(opts):
            return style_errors_of(net(image), image, losses)

    def _autocast(self, opts: StylizeOptions) -> contextlib.AbstractContextManager[object]:
        if self.precision(opts) == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _report(
        self, run: _Run, index: int, image: torch.Tensor, last: Mapping[str, torch.Tensor | float], started: float,
        fresh: bool = True,
    ) -> float:
        """Record one iteration, call the callback; returns the total loss.

        ``fresh`` is False when ``last`` holds the values of an earlier iteration (a batch between two reads):
        they are passed on as they are, neither checked again nor added to the history."""
        values = {name: float(value) for name, value in last.items()}  # the host sync, when they are tensors
        if fresh and not math.isfinite(values["total"]):
            raise NumericalError(
                f"the loss became {values['total']} at iteration {run.done + 1}; "
                "try lower weights or a smaller learning rate"
            )
        width, height = run.sizes[index]
        run.done += 1
        run.work_done += width * height
        run.loop_time += time.perf_counter() - started
        elapsed = time.perf_counter() - run.start
        eta = run.loop_time / run.work_done * (run.total_work - run.work_done)
        terms = {k: v for k, v in values.items() if k != "total"}
        if fresh:
            run.history.append({"iteration": run.done, "scale": index, "elapsed": elapsed,
                                "loss": values["total"], **terms})
        if run.callback is None:
            return values["total"]
        preview = None
        if self.preview_due(run):
            snapshot = image.detach().clone()
            preview = lambda: tensor_to_pil(snapshot)  # noqa: E731 - paid for only when the caller wants it
        run.callback(
            Iterate(
                iteration=run.done,
                total_iterations=run.total,
                scale_index=index,
                scale_count=len(run.sizes),
                width=width,
                height=height,
                loss=values["total"],
                losses=terms,
                elapsed=elapsed,
                eta=eta,
                peak_memory_bytes=self.peak_memory(),
                preview=preview,
                loss_fresh=fresh,
            )
        )
        return values["total"]

    @staticmethod
    def preview_due(run: _Run, ahead: int = 0) -> bool:
        """Whether the iteration ``ahead`` after the last one done offers a preview (``ahead=1``: the next)."""
        every = run.opts.preview_every
        return bool(every) and (run.done + ahead) % every == 0

    def peak_memory(self) -> int:
        """Peak bytes: CUDA allocator peak on GPU, the process's peak RSS on CPU."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def variations(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        count: int,
        opts: StylizeOptions | None = None,
        callback: Callback | None = None,
        controls: Sequence[StyleControl | None] | None = None,
        content_strength: Image.Image | None = None,
    ) -> list[StylizeResult]:
        """``count`` results, each from its own seed with a randomised texture, contrast and colour.

        Variation ``k`` uses seed ``opts.seed + k`` and, scaled by ``opts.variation_strength`` (s):
        texture — the start image is the content plus Gaussian noise of std 0.25·s;
        contrast — each style image's contrast around its mean is multiplied by exp(u·0.5·s), u ~ U(−1, 1);
        colour — each style image's hue is rotated by u·s·60° in the YIQ chroma plane, u ~ U(−1, 1).
        """
        opts = opts or StylizeOptions()
        base = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
        return [
            self._variation(content, styles, opts.replace(seed=base + k), callback, controls, content_strength)
            for k in range(count)
        ]

    def _variation(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        opts: StylizeOptions,
        callback: Callback | None,
        controls: Sequence[StyleControl | None] | None,
        content_strength: Image.Image | None,
    ) -> StylizeResult:
        assert opts.seed is not None
        gen = torch.Generator().manual_seed(opts.seed)
        strength = opts.variation_strength
        varied = [tensor_to_pil(_vary_style(pil_to_tensor(s), gen, strength)) for s in styles]
        content_t = pil_to_tensor(content)
        noisy = (content_t + 0.25 * strength * torch.randn(content_t.shape, generator=gen)).clamp(0, 1)
        return self.stylize(content, varied, opts, callback, init_image=tensor_to_pil(noisy),
                            controls=controls, content_strength=content_strength)


def style_errors_of(
    features: Mapping[str, torch.Tensor], image: torch.Tensor, losses: SumLoss
) -> dict[str, float]:
    """Each style term's unweighted relative error on one job's ``features`` (call under ``no_grad``)."""
    terms = [cast(LayerApply, scale.module) for scale in cast(Iterable[Scale], losses["style"])]
    return {term.key: math.sqrt(max(float(term(features, image)), 0.0)) for term in terms}


#: A CPU with bf16 instructions runs ``precision=auto`` in bf16 only if bf16 is at least this much faster there.
BF16_MIN_SPEEDUP = 1.15


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Does ``device`` run bf16 convolutions faster than fp32 (CUDA with bf16; a CPU with AVX512-BF16 / AMX where
    :func:`cpu_bf16_speedup` measures it)?"""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        if not any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes):
            return False
        return cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
    return False


def cpu_bf16_speedup(repeats: int = 3) -> float:
    """fp32 time ÷ bf16 time of a VGG convolution's forward and backward pass (128 channels, 64×64) on this CPU.

    The instruction set alone does not say which is faster: the engine at 512 px ran 1.8× faster in bf16 than in
    fp32 on an AMD Zen 4 (AVX512-BF16), but 1.4× slower on an Intel Xeon whose VM exposes AVX512-BF16 and not AMX
    (oneDNN then has no fast bf16 backward); this layer measures 0.62–0.72 there, as the whole network does.
    Measured once per process (≈ 0.2 s); the best of ``repeats`` runs of each, so that a busy machine slows
    both alike rather than one of them.
    """
    generator = torch.Generator().manual_seed(0)  # not the global generator: timing must not shift user seeds
    inputs = torch.rand(1, 128, 64, 64, generator=generator).to(memory_format=torch.channels_last)
    inputs.requires_grad_(True)  # as in the engine: the gradient flows to the image, the weights are frozen
    weight = (torch.rand(128, 128, 3, 3, generator=generator) - 0.5).to(memory_format=torch.channels_last)

    def timed(bf16: bool) -> float:
        best = math.inf
        for _ in range(repeats + 1):  # the first run of each also builds oneDNN's kernels
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                F.conv2d(inputs, weight, padding=1).float().square().mean().backward()
            best = min(best, time.perf_counter() - started)
        return best

    return timed(bf16=False) / timed(bf16=True)


def _vary_style(style: torch.Tensor, gen: torch.Generator, strength: float) -> torch.Tensor:
    contrast = math.exp(float(torch.empty(1).uniform_(-1, 1, generator=gen)) * 0.5 * strength)
    angle = float(torch.empty(1).uniform_(-1, 1, generator=gen)) * strength * math.pi / 3
    mean = style.mean(dim=(2, 3), keepdim=True)
    style = (style - mean) * contrast + mean
    yiq = color.rgb_to_yiq(style)
    cos, sin = math.cos(angle), math.sin(angle)
    i, q = yiq[:, 1:2], yiq[:, 2:3]
    yiq = torch.cat([yiq[:, :1], cos * i - sin * q, sin * i + cos * q], dim=1)
    return color.yiq_to_rgb(yiq).clamp(0, 1)


class _Best:
    """The lowest-loss iterate of a scale.

    L-BFGS without a line search (as in neural-style) occasionally overshoots; returning the last iterate would
    sometimes return a spike. The loss of step k is measured at the image before its update, hence ``before``.
    """

    def __init__(self) -> None:
        self.loss = math.inf
        self.image: torch.Tensor | None = None

    def offer(self, loss: float, image: torch.Tensor) -> None:
        if loss < self.loss:
            self.loss, self.image = loss, image


class _EMA:
    """Exponential moving average of the iterates (Polyak averaging), with bias correction.

    Adam's raw iterate is noisy; returning the average gives cleaner images (crowsonkb's ``EMA``).
    """

    def __init__(self, image: torch.Tensor, decay: float) -> None:
        self.decay = decay
        self.accumulated = torch.zeros_like(image.detach())
        self.weight = 0.0

    def update(self, image: torch.Tensor) -> None:
        self.weight = self.weight * self.decay + 1
        self.accumulated.mul_(self.decay).add_(image.detach())

    @property
    def value(self) -> torch.Tensor:
        return self.accumulated / self.weight


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    width, height = size
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def iterate_sizes(opts: StylizeOptions, size: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """The (width, height) of each scale for an input of ``size`` (for planning and tests)."""
    return (fit_long_side(size, s) for s in opts.scales())

