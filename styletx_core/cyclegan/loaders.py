"""Load CycleGAN generators from state dicts in several key layouts, inferring the architecture from the keys.

The canonical layout is the reference implementation's (see ``generator``). Other layouts are converted by a
small table of regular-expression rules (``KEY_LAYOUTS``); adding a layout means adding one row and a test.
Every file is read with ``torch.load(..., weights_only=True)`` or safetensors: a checkpoint can never run code.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ModelError
from .generator import CycleGANGenerator, GeneratorConfig

__all__ = [
    "KEY_LAYOUTS",
    "KeyLayout",
    "build_generator",
    "canonicalize",
    "infer_config",
    "load_generator",
    "read_state_dict",
    "sha256_file",
]

_LOGGER = logging.getLogger(__name__)
TORCH_SUFFIXES = (".pth", ".pt", ".safetensors")
_BLOCK0 = 10  # index of the first residual block in the reference ``model`` Sequential


@dataclass(frozen=True)
class KeyLayout:
    """One known state-dict layout: a key pattern only it produces, and rewrite rules to the reference layout."""

    name: str
    marker: str
    rules: tuple[tuple[str, str], ...]
    source: str

    def matches(self, keys: list[str]) -> bool:
        return any(re.search(self.marker, k) for k in keys)

    def apply(self, key: str) -> str:
        for pattern, repl in self.rules:
            key = re.sub(pattern, repl, key)
        return key


KEY_LAYOUTS: tuple[KeyLayout, ...] = (
    KeyLayout("reference", r"^model\.\d+\.conv_block\.5\.weight$", (),
              "junyanz/pytorch-CycleGAN-and-pix2pix ResnetGenerator (latest_net_G*.pth)"),
    # use_dropout=True puts nn.Dropout at conv_block.4, shifting the second conv and norm by one index.
    KeyLayout("reference-dropout", r"^model\.\d+\.conv_block\.6\.weight$",
              ((r"\.conv_block\.6\.", ".conv_block.5."), (r"\.conv_block\.7\.", ".conv_block.6.")),
              "reference ResnetGenerator trained with --use_dropout"),
    KeyLayout("vintagify", r"^model\.\d+\.block\.1\.weight$", ((r"^(model\.\d+)\.block\.", r"\1.conv_block."),),
              "vintagify 0.1.2 ResnetGenerator (G_A2B_epoch33.pth)"),
)

# Keys that carry no weights we use: instance-norm running statistics from checkpoints trained with
# track_running_stats (the reference drops them the same way in ``__patch_instance_norm_state_dict``).
_IGNORED = re.compile(r"\.(running_mean|running_var|num_batches_tracked)$")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "generator", "netG", "G")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (model files are tens of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_sidecar(path: Path) -> None:
    """If ``<file>.sha256`` exists beside the model, the file must match it (caches are written this way)."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return
    words = sidecar.read_text().split()  # "<hex>" or sha256sum's "<hex>  <name>"
    expected = words[0].lower() if words else ""
    actual = sha256_file(path)
    if expected != actual:
        raise ModelError(f"{path}: checksum mismatch (sidecar says {expected[:12]}…, file is {actual[:12]}…); "
                         "delete it and prepare the weights again")


def _unwrap(obj: Any, select: str | None, path: Path) -> Mapping[str, Any]:
    """Find the generator's state dict inside a checkpoint (bare, or wrapped as ``{"state_dict": …}``)."""
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path}: expected a state dict (a mapping of tensors), found {type(obj).__name__}")
    if select is not None:
        if select not in obj or not isinstance(obj[select], Mapping):
            raise ModelError(f"{path}: no state dict under {select!r}; entries: {sorted(map(str, obj))[:10]}")
        return obj[select]
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    for key in _WRAPPERS:
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    raise ModelError(f"{path}: not a generator state dict; top-level entries: {sorted(map(str, obj))[:10]} "
                     "(pass select=NAME to pick one)")


def read_state_dict(path: str | Path, select: str | None = None) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt`` (weights_only) or ``.safetensors`` file into a CPU float32 state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    _verify_sidecar(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    raw = _unwrap(obj, select, path)
    bad = [k for k, v in raw.items() if not isinstance(v, Tensor)]
    if bad:
        raise ModelError(f"{path}: entries that are not tensors: {bad[:5]}")
    return {str(k): v.float() if v.is_floating_point() else v for k, v in raw.items()}


def canonicalize(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Rewrite a state dict to the reference layout; returns it and the name of the layout it came in."""
    keys = [k.removeprefix("module.") for k in sd]  # nn.DataParallel wraps the model as .module
    values = dict(zip(keys, sd.values(), strict=True))
    keys = [k for k in keys if not _IGNORED.search(k)]
    layout = next((lay for lay in KEY_LAYOUTS if lay.matches(keys)), None)
    if layout is None:
        if keys and all(re.fullmatch(r"model\.\d+\.(weight|bias)", k) for k in keys):
            layout = KEY_LAYOUTS[0]  # a reference generator with zero residual blocks
        else:
            known = ", ".join(lay.name for lay in KEY_LAYOUTS)
            raise ModelError(f"unrecognised generator key layout (known: {known}); first keys: {keys[:6]}")
    return {layout.apply(k): values[k] for k in keys}, layout.name


def infer_config(sd: Mapping[str, Tensor]) -> GeneratorConfig:
    """Blocks, ngf, affine norm and channel counts from a reference-layout state dict."""
    first = sd.get("model.1.weight")
    if first is None or first.dim() != 4 or tuple(first.shape[2:]) != (7, 7):
        raise ModelError("not a ResNet generator: no initial 7×7 convolution 'model.1.weight'")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.conv_block\.1\.weight$", k))})
    n_blocks = len(blocks)
    if blocks != list(range(_BLOCK0, _BLOCK0 + n_blocks)):
        raise ModelError(f"residual blocks must be model.{_BLOCK0}… consecutively; found indices {blocks}")
    last = sd.get(f"model.{_BLOCK0 + n_blocks + 7}.weight")
    if last is None or last.dim() != 4:
        raise ModelError(f"no output convolution 'model.{_BLOCK0 + n_blocks + 7}.weight' after {n_blocks} blocks")
    return GeneratorConfig(n_blocks=n_blocks, ngf=int(first.shape[0]), affine="model.2.weight" in sd,
                           input_nc=int(first.shape[1]), output_nc=int(last.shape[0]))


def _mismatch_report(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} expected {tuple(v.shape)} got {tuple(given[k].shape)}"
              for k, v in expected.items() if k in given and v.shape != given[k].shape]
    parts = [f"{label} {items[:4]}{' …' if len(items) > 4 else ''}"
             for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
    return "; ".join(parts)


def build_generator(sd: Mapping[str, Tensor], name: str = "checkpoint") -> CycleGANGenerator:
    """Construct the generator that ``sd`` (any known layout) describes and load it strictly."""
    canon, layout = canonicalize(sd)
    cfg = infer_config(canon)
    gen = CycleGANGenerator(cfg)
    report = _mismatch_report(gen.state_dict(), canon)
    if report:
        raise ModelError(f"{name}: {layout} layout does not match {cfg.describe()}: {report}")
    if not all(torch.isfinite(v).all() for v in canon.values() if v.is_floating_point()):
        raise ModelError(f"{name}: weights contain NaN or infinity")
    gen.load_state_dict(canon, strict=True)
    _LOGGER.debug("loaded %s (%s layout): %s", name, layout, cfg.describe())
    return gen.eval()


def load_generator(path: str | Path, device: str | torch.device = "cpu",
                   select: str | None = None) -> CycleGANGenerator:
    """Load a generator checkpoint (``.pth``/``.pt``/``.safetensors``) in any layout of ``KEY_LAYOUTS``.

    Args:
        path: the checkpoint; a ``<path>.sha256`` sidecar, when present, is verified first.
        device: where to put the model.
        select: the entry holding the generator in a multi-network checkpoint (e.g. ``"G_AB"`` of ours).

    Raises:
        ModelError: missing/corrupt file, unknown layout, or keys/shapes that do not fit the inferred architecture.
    """
    path = Path(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise ModelError(f"{path}: unsupported model file type {path.suffix!r} (use {', '.join(TORCH_SUFFIXES)})")
    gen = build_generator(read_state_dict(path, select), name=str(path))
    return gen.to(device)
