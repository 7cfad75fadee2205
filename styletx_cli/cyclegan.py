"""``styletx cyclegan run | train | export-onnx | list | fetch``: unpaired image-to-image translation.

Registered through the ``styletx.commands`` entry point; also runs alone as
``python -m styletx_cli.cyclegan ACTION ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from styletx_client import StyletxError
from styletx_client.commandline import EXIT_USAGE, print_error
from styletx_client.imagefile import check_output, save_image

from styletx_core.errors import EngineError

__all__ = ["main", "register", "resolve_generator"]

_LOGGER = logging.getLogger(__name__)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cyclegan`` and its actions to ``subparsers``; each sets ``func`` (``args.func(args)`` → status)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cyclegan", help="CycleGAN generators: translate images, train on two folders, export to ONNX",
        description="Unpaired image-to-image translation with CycleGAN ResNet generators (Zhu et al. 2017).")
    actions = parser.add_subparsers(dest="cyclegan_action", metavar="ACTION", required=True)
    _add_run(actions)
    _add_train(actions)
    _add_export(actions)
    listing = actions.add_parser("list", help="the generators available by name")
    listing.add_argument("--models-dir", type=Path, help="directory of named generator files")
    listing.set_defaults(func=_list)
    fetch = actions.add_parser("fetch", help="download and cache the shipped 'vintage' generator")
    fetch.add_argument("--force", action="store_true", help="convert again even if cached")
    fetch.set_defaults(func=_fetch)
    return parser


def _add_run(actions: Any) -> None:
    run = actions.add_parser("run", help="translate an image with a generator (tiled when large)")
    run.add_argument("model", help="a model name (see `list`) or a .pth/.pt/.safetensors/.onnx file")
    run.add_argument("input", type=Path, metavar="INPUT", help="image to translate")
    run.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                     help="image to write: .png, .jpg/.jpeg, .webp or .tif/.tiff (missing folders are created)")
    run.add_argument("--models-dir", type=Path, help="directory of named generator files")
    run.add_argument("--tile", type=int, default=512, help="tile side in px, multiple of 4 (default 512)")
    run.add_argument("--overlap", type=int, default=64, help="tile overlap in px, multiple of 4 (default 64)")
    run.add_argument("--stats-side", type=int, default=1024,
                     help="long side up to which instance-norm statistics are exact (default 1024)")
    run.add_argument("--select", help="entry holding the generator in a multi-network checkpoint, e.g. G_AB")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.set_defaults(func=_run)


def _add_train(actions: Any) -> None:
    from styletx_core.cyclegan.options import TrainOptions

    d = TrainOptions()
    train = actions.add_parser(
        "train", help="train A↔B generators on two unpaired image folders",
        description="Train a CycleGAN with the paper's objective. Writes checkpoint.pt, latest_net_G_A.pth "
                    "(A→B), latest_net_G_B.pth (B→A) and samples/ into --out; rerun to resume.")
    train.add_argument("--a", type=Path, required=True, metavar="DIR_A", help="images of domain A")
    train.add_argument("--b", type=Path, required=True, metavar="DIR_B", help="images of domain B")
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    train.add_argument("--steps", type=int, default=d.steps, help=f"optimisation steps (default {d.steps})")
    train.add_argument("--decay-from", type=float, default=d.decay_from,
                       help="fraction of steps after which the learning rate decays linearly to 0")
    train.add_argument("--size", type=int, default=d.crop_size, help="random crop side (default 256)")
    train.add_argument("--load-size", type=int, help="shorter side before cropping (default size·286/256)")
    train.add_argument("--batch-size", type=int, default=d.batch_size)
    train.add_argument("--lr", type=float, default=d.lr)
    train.add_argument("--n-blocks", type=int, default=d.n_blocks, help="residual blocks (6 or 9 usual)")
    train.add_argument("--ngf", type=int, default=d.ngf)
    train.add_argument("--ndf", type=int, default=d.ndf)
    train.add_argument("--affine", action="store_true", help="learnable instance-norm scale and shift")
    train.add_argument("--lambda-cycle", type=float, default=d.lambda_cycle)
    train.add_argument("--lambda-identity", type=float, default=d.lambda_identity)
    train.add_argument("--sample-every", type=int, default=d.sample_every)
    train.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    train.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    train.set_defaults(func=_train)


def _add_export(actions: Any) -> None:
    export = actions.add_parser("export-onnx", help="export a generator to ONNX (dynamic height/width)")
    export.add_argument("model", help="a model name or a .pth/.pt/.safetensors file")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.onnx")
    export.add_argument("--models-dir", type=Path, help="directory of named generator files")
    export.add_argument("--select", help="entry holding the generator in a multi-network checkpoint")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--check", action="store_true", help="compare onnxruntime with torch on a test image")
    export.set_defaults(func=_export)


def _fail(exc: BaseException) -> int:
    print_error(exc)
    return 1


def resolve_generator(spec: str, models_dir: Path | None, device: str, select: str | None = None) -> Any:
    """A registry name, else a file path: the loaded generator."""
    from styletx_core.cyclegan.loaders import load_generator
    from styletx_core.cyclegan.onnx import OnnxGenerator
    from styletx_core.cyclegan.registry import GeneratorRegistry

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(spec)
    if path.suffix and path.exists():
        return OnnxGenerator(path) if path.suffix == ".onnx" else load_generator(path, device, select)
    return GeneratorRegistry(models_dir, device=device).get(spec)


def _tile_progress(done: int, total: int) -> None:
    """Tiles done, redrawn in place on a terminal; nothing on a pipe or a log (no carriage returns there)."""
    if sys.stderr.isatty():
        print(f"\r  tile {done}/{total}", end="", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from styletx_core.cyclegan.tiling import run_tiled, tile_count
    from styletx_core.imageio import load_image

    try:
        check_output(args.output, "--output")
        gen = resolve_generator(args.model, args.models_dir, args.device, args.select)
        image = load_image(args.input, field="input")
        total = tile_count(image.width, image.height, args.tile, args.overlap)
        start = time.perf_counter()
        out = run_tiled(gen, image, args.tile, args.overlap, stats_side=args.stats_side,
                        callback=_tile_progress if total > 1 else None)
        save_image(out, args.output)
    except StyletxError as exc:
        print_error(exc.message)
        return EXIT_USAGE
    except (EngineError, OSError, ValueError) as exc:
        return _fail(exc)
    if total > 1 and sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"{args.output} ({out.width}×{out.height}, {total} tile(s), {time.perf_counter() - start:.2f} s)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from styletx_core.cyclegan.train import TrainIterate, TrainOptions, train_cyclegan

    opts = TrainOptions(
        steps=args.steps, decay_from=args.decay_from, crop_size=args.size,
        load_size=args.load_size or round(args.size * 286 / 256), batch_size=args.batch_size, lr=args.lr,
        n_blocks=args.n_blocks, ngf=args.ngf, ndf=args.ndf, affine=args.affine, lambda_cycle=args.lambda_cycle,
        lambda_identity=args.lambda_identity, sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device, amp=not args.no_amp,
        workers=args.workers)
    bar = tqdm(total=opts.steps, unit="step", dynamic_ncols=True)

    def progress(it: TrainIterate) -> None:
        if bar.n == 0 and it.step > 1:
            bar.update(it.step - 1)  # resumed
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in it.losses.items()} | {"lr": f"{it.lr:.1e}"}, refresh=False)

    try:
        result = train_cyclegan(args.a, args.b, args.out, opts, progress, resume=not args.no_resume)
    except (EngineError, OSError, ValueError) as exc:
        bar.close()
        return _fail(exc)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted; a checkpoint was written to {args.out} (rerun to resume)", file=sys.stderr)
        return 130
    bar.close()
    print(f"A→B: {result.generator_a2b}\nB→A: {result.generator_b2a}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from styletx_core.cyclegan.generator import CycleGANGenerator
    from styletx_core.cyclegan.onnx import OnnxGenerator, export_onnx

    try:
        gen = resolve_generator(args.model, args.models_dir, "cpu", args.select)
        if not isinstance(gen, CycleGANGenerator):
            raise EngineError(f"{args.model} is already an ONNX model")
        path = export_onnx(gen, args.output, opset=args.opset)
        if args.check:
            x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(0)) * 2 - 1
            with torch.no_grad():
                diff = float((OnnxGenerator(path)(x) - gen(x)).abs().max())
            print(f"onnxruntime vs torch: max abs difference {diff:.2e}", file=sys.stderr)
    except (EngineError, OSError, ValueError, RuntimeError) as exc:
        return _fail(exc)
    print(str(path), file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from styletx_core.cyclegan.registry import GeneratorRegistry

    infos = GeneratorRegistry(args.models_dir).infos()
    for info in infos:
        print(f"{info.name}\t{info.format}\t{info.path}\t{info.description}")
    if not infos:
        print("no generators: run `styletx cyclegan fetch` or pass --models-dir", file=sys.stderr)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from styletx_core.cyclegan.pretrained import fetch_vintagify

    try:
        fetch_vintagify(force=args.force, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    except EngineError as exc:
        return _fail(exc)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m styletx_cli.cyclegan ACTION ...``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="styletx")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["cyclegan", *(sys.argv[1:] if argv is None else argv)])
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
