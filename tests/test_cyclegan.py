"""CycleGAN: loaders for every key layout, clear errors, tiling, ONNX parity, registry, CLI, and learning."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import require_tool
from domains import crops, synthetic, write_images
from PIL import Image
from support.warnings_check import quiet_recorder

from styletx_core.cyclegan import (
    CycleGANGenerator,
    GeneratorConfig,
    GeneratorRegistry,
    OnnxGenerator,
    TrainOptions,
    export_onnx,
    load_generator,
    run_tiled,
    train_cyclegan,
    translate_tensor,
)
from styletx_core.cyclegan.loaders import canonicalize, infer_config
from styletx_core.cyclegan.tiling import _axis
from styletx_core.errors import Cancelled, ImageError, ModelError, OptionError, WeightsUnavailableError

SMALL = GeneratorConfig(n_blocks=2, ngf=8, affine=True)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These nets are tiny: on a shared 2-core machine intra-op threads only add contention (measured
    0.12 s/step with one thread vs. 14 s/step with two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_generator(cfg: GeneratorConfig = SMALL, seed: int = 0) -> CycleGANGenerator:
    torch.manual_seed(seed)
    gen = CycleGANGenerator(cfg).eval()
    with torch.no_grad():  # non-trivial affine norm parameters, so a mis-mapped key changes the output
        for norm in gen.norms():
            if norm.affine:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.2, 0.2)
    return gen


def _same_output(a: CycleGANGenerator, b: CycleGANGenerator) -> bool:
    x = synthetic(32, 40)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


# ------------------------------------------------------------------------------------------- loaders


def _rename(sd: dict[str, torch.Tensor], pattern: str, repl: str) -> dict[str, torch.Tensor]:
    return {re.sub(pattern, repl, k): v for k, v in sd.items()}


def test_reference_layout_loads_and_infers_the_architecture(tmp_path: Path) -> None:
    gen = _random_generator(GeneratorConfig(n_blocks=6, ngf=8, affine=False))
    sd = gen.state_dict()
    assert "model.10.conv_block.1.weight" in sd and "model.23.weight" in sd  # the reference's indices
    torch.save(sd, tmp_path / "latest_net_G.pth")
    loaded = load_generator(tmp_path / "latest_net_G.pth")
    assert loaded.config == GeneratorConfig(n_blocks=6, ngf=8, affine=False)
    assert _same_output(gen, loaded)


@pytest.mark.parametrize("layout", ["vintagify", "reference-dropout"])
def test_other_layouts_map_through_the_key_table(tmp_path: Path, layout: str) -> None:
    gen = _random_generator(GeneratorConfig(n_blocks=9, ngf=4, affine=True))
    sd = gen.state_dict()
    if layout == "vintagify":
        sd = _rename(sd, r"\.conv_block\.", ".block.")
    else:  # Dropout at conv_block.4 shifts the second conv and norm by one
        sd = _rename(_rename(sd, r"conv_block\.6\.", "conv_block.7."), r"conv_block\.5\.", "conv_block.6.")
    assert canonicalize(sd)[1] == layout
    torch.save(sd, tmp_path / "g.pth")
    loaded = load_generator(tmp_path / "g.pth")
    assert loaded.config.n_blocks == 9 and loaded.config.affine
    assert _same_output(gen, loaded)


def test_wrapped_prefixed_checkpoints_with_running_stats_load(tmp_path: Path) -> None:
    gen = _random_generator()
    sd = {f"module.{k}": v for k, v in gen.state_dict().items()}
    sd["module.model.2.running_mean"] = torch.zeros(8)  # track_running_stats leftovers are dropped
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    assert _same_output(gen, load_generator(tmp_path / "wrapped.pth"))


def test_safetensors_and_selected_entries_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    gen = _random_generator()
    save_file(gen.state_dict(), str(tmp_path / "g.safetensors"))
    assert _same_output(gen, load_generator(tmp_path / "g.safetensors"))
    torch.save({"G_AB": gen.state_dict(), "G_BA": _random_generator(seed=1).state_dict()}, tmp_path / "both.pt")
    assert _same_output(gen, load_generator(tmp_path / "both.pt", select="G_AB"))
    with pytest.raises(ModelError, match="pass select"):
        load_generator(tmp_path / "both.pt")


def _save(tmp_path: Path, obj: object, name: str = "bad.pth") -> Path:
    torch.save(obj, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda sd: {k: v for k, v in sd.items() if k != "model.11.conv_block.5.weight"}, r"missing \['model.11"),
        (lambda sd: {**sd, "model.4.weight": torch.zeros(16, 4, 3, 3)}, r"shape.*model.4.weight expected"),
        (lambda sd: {**sd, "model.99.weight": torch.zeros(1)}, r"unexpected \['model.99.weight'\]"),
        (lambda sd: {k: v for k, v in sd.items() if k != "model.5.weight"}, r"missing \['model.5.weight'"),
        (lambda sd: {k: v for k, v in sd.items() if ".10." not in k}, r"model.10… consecutively"),
        (lambda sd: {k: v for k, v in sd.items() if not k.startswith("model.1.")}, r"7×7 convolution"),
        (lambda sd: {f"encoder.{k}": v for k, v in sd.items()}, r"unrecognised generator key layout"),
        (lambda sd: {**sd, "model.1.bias": torch.full((8,), float("nan"))}, r"NaN"),
    ],
    ids=["missing", "shape", "unexpected", "partly-affine", "gap", "not-resnet", "layout", "nan"],
)
def test_mismatched_checkpoints_name_what_does_not_match(tmp_path: Path, mutate, message: str) -> None:
    path = _save(tmp_path, mutate(_random_generator().state_dict()))
    with pytest.raises(ModelError, match=message):
        load_generator(path)


class _Evil:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("code ran",))


def test_unsafe_corrupt_and_tampered_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_generator(_save(tmp_path, {"model.1.weight": _Evil()}, "evil.pth"))  # weights_only refuses it
    assert "code ran" not in capsys.readouterr().out
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_generator(tmp_path / "junk.pth")
    with pytest.raises(ModelError, match="expected a state dict"):
        load_generator(_save(tmp_path, torch.zeros(3), "tensor.pth"))
    with pytest.raises(ModelError, match="not found"):
        load_generator(tmp_path / "absent.pth")
    with pytest.raises(ModelError, match="unsupported model file type"):
        load_generator(tmp_path / "junk.bin")
    good = _save(tmp_path, _random_generator().state_dict(), "good.pth")
    (tmp_path / "good.pth.sha256").write_text("0" * 64 + "  good.pth\n")
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_generator(good)


def test_infer_config_reads_channels_and_width() -> None:
    sd = CycleGANGenerator(GeneratorConfig(n_blocks=0, ngf=6, input_nc=1, output_nc=3)).state_dict()
    assert infer_config(canonicalize(sd)[0]) == GeneratorConfig(n_blocks=0, ngf=6, input_nc=1, output_nc=3)


# ------------------------------------------------------------------------------------------- tiling


def _tile_edges(length: int, tile: int, overlap: int) -> list[int]:
    axis = _axis(length, tile, overlap)
    edges = [s for s, _ in axis[1:]] + [s + tile for s, _ in axis[:-1]]
    return edges


def test_tiled_equals_untiled_away_from_tile_borders() -> None:
    gen = _random_generator(GeneratorConfig(n_blocks=3, ngf=8, affine=True))
    x = synthetic(160, 200)
    with torch.no_grad():
        ref = gen(x)
    calls: list[tuple[int, int]] = []
    tiled = translate_tensor(gen, x, tile=96, overlap=32, stats_side=512, callback=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6) and len(calls) == 6  # 2 × 3 tiles
    err = (tiled - ref).abs().amax(1)[0]
    dist = torch.full(err.shape, 10**6)
    for e in _tile_edges(160, 96, 32):
        dist = torch.minimum(dist, (torch.arange(160)[:, None] - e).abs().expand_as(dist))
    for e in _tile_edges(200, 96, 32):
        dist = torch.minimum(dist, (torch.arange(200)[None, :] - e).abs().expand_as(dist))
    far = dist >= 24
    assert far.float().mean() > 0.1
    assert float(err[far].max()) < 0.03, "tiles must match the untiled output away from their borders"
    assert float(err.mean()) < 0.03
    # Per-tile statistics (what freezing avoids) are far off: the test can tell the two apart.
    assert all(n.frozen is None for n in gen.norms()), "frozen statistics must be released after the run"
    naive = torch.cat([torch.cat([gen(x[..., y : y + 80, c : c + 100]) for c in (0, 100)], -1)
                       for y in (0, 80)], -2).detach()
    assert float((naive - ref).abs().mean()) > 3 * float(err.mean())


def test_tiling_pads_odd_sizes_uses_a_mosaic_for_large_images_and_can_be_cancelled() -> None:
    gen = _random_generator()
    x = synthetic(75, 141)  # not multiples of 4, long side > stats_side → mosaic statistics
    out = translate_tensor(gen, x, tile=64, overlap=16, stats_side=64, stats_patch=32)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() <= 1
    with torch.no_grad():  # a single tile is exact
        assert torch.allclose(translate_tensor(gen, x[..., :64, :60], tile=64), gen(x[..., :64, :60]), atol=1e-5)

    def cancel(done: int, total: int) -> None:
        raise Cancelled()

    with pytest.raises(Cancelled):
        translate_tensor(gen, x, tile=64, overlap=16, callback=cancel)
    assert all(n.frozen is None for n in gen.norms())
    with pytest.raises(OptionError, match="overlap"):
        translate_tensor(gen, x, tile=64, overlap=10)
    with pytest.raises(OptionError, match="tile"):
        translate_tensor(gen, x, tile=62)
    with pytest.raises(ImageError, match="at least"):
        translate_tensor(gen, x[..., :4, :4])


def test_run_tiled_keeps_the_pil_image_size() -> None:
    image = Image.fromarray((np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8))
    out = run_tiled(_random_generator(), image, tile=48, overlap=8)
    assert out.size == image.size and out.mode == "RGB"


# ------------------------------------------------------------------------------------------- onnx


@pytest.mark.slow
def test_onnx_export_matches_torch_at_several_sizes(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    gen = _random_generator()
    with quiet_recorder() as caught:
        path = export_onnx(gen, tmp_path / "g.onnx", size=64)
    assert capfd.readouterr() == ("", "")  # torch.onnx.export(dynamo=True), quietly
    assert caught == [], [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["translated"]
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["styletx.kind"] == "cyclegan-generator" and props["styletx.architecture"] == SMALL.describe()
    assert "InstanceNormalization" in {node.op_type for node in model.graph.node}  # see the module doc
    onnx_gen = OnnxGenerator(path)
    for n, h, w in ((1, 64, 64), (1, 96, 128), (2, 48, 80), (1, 77, 101)):  # odd: what tiling never sends
        x = torch.cat([synthetic(h, w).roll(i, dims=3) for i in range(n)])
        with torch.no_grad():
            want = gen(x)
        got = onnx_gen(x)
        assert got.shape == want.shape and float((got - want).abs().max()) < 1e-4
    with pytest.raises(ModelError, match="opset 17 is too old"):
        export_onnx(gen, tmp_path / "old.onnx", opset=17, size=64)
    tiled = translate_tensor(onnx_gen, synthetic(96, 128), tile=64, overlap=16)  # per-tile statistics
    assert tiled.shape == (1, 3, 96, 128) and torch.isfinite(tiled).all()
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        OnnxGenerator(tmp_path / "bad.onnx")


# ------------------------------------------------------------------------------------------- registry


def test_registry_lists_loads_and_caches_named_models(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    gen = _random_generator()
    torch.save(gen.state_dict(), models / "monet.pth")
    (models / "monet.json").write_text(json.dumps({"description": "photo → Monet", "licence": "BSD"}))
    export_onnx(gen, models / "monet-onnx.onnx", size=32)
    (models / "notes.txt").write_text("ignored")
    registry = GeneratorRegistry(models, cache_dir=tmp_path / "empty-cache")
    assert registry.names() == ["monet", "monet-onnx"]
    assert registry.info("monet").description == "photo → Monet"
    assert isinstance(registry.get("monet-onnx"), OnnxGenerator)
    assert registry.get("monet") is registry.get("monet")
    with pytest.raises(ModelError, match=r"unknown CycleGAN model 'degas'; available: monet, monet-onnx"):
        registry.get("degas")
    assert GeneratorRegistry(tmp_path / "missing", cache_dir=tmp_path / "empty-cache").names() == []


# ------------------------------------------------------------------------------------------- vintagify


@pytest.fixture(scope="module")
def vintage_path() -> Path:
    from styletx_core.cyclegan.pretrained import cached_pretrained, fetch_vintagify

    path = cached_pretrained("vintage")
    if path is None:
        try:
            path = fetch_vintagify()
        except WeightsUnavailableError as exc:
            require_tool(False, f"vintagify weights not prepared and not downloadable: {exc}")
    return path


def test_the_real_vintagify_generator_loads_and_translates(vintage_path: Path) -> None:
    raw = GeneratorRegistry(None).get("vintage")
    assert isinstance(raw, CycleGANGenerator)
    assert raw.config == GeneratorConfig(n_blocks=9, ngf=64, affine=True)
    x = synthetic(64, 96)
    with torch.no_grad():
        y = raw(x)
    assert y.shape == x.shape and float(y.abs().max()) <= 1
    assert float((y - x).abs().mean()) > 0.05  # it changes the image …
    assert float(torch.corrcoef(torch.stack([y.mean(1).flatten(), x.mean(1).flatten()]))[0, 1]) > 0.5  # … not its layout


# ------------------------------------------------------------------------------------------- training


def _mean_colour(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(0, 2, 3))


@pytest.mark.slow
def test_training_learns_the_colour_of_domain_b(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b, held_out = crops(24, rng, False), crops(24, rng, True), crops(8, rng, False)
    opts = TrainOptions(steps=150, decay_from=0.7, load_size=72, crop_size=64, n_blocks=1, ngf=8, ndf=8,
                        lr=6e-4, sample_every=150, checkpoint_every=0, device="cpu")
    result = train_cyclegan(write_images(a, tmp_path / "a"), write_images(b, tmp_path / "b"), tmp_path / "out", opts)

    cycle = [h["cycle"] for h in result.history]
    assert len(cycle) == 150
    assert np.mean(cycle[-15:]) < 0.85 * np.mean(cycle[:15]), "the cycle-consistency loss must fall"
    x = torch.from_numpy(held_out[:, 4:68, 4:68].astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
    target = _mean_colour(torch.from_numpy(b.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2))
    with torch.no_grad():
        moved = _mean_colour(load_generator(result.generator_a2b)(x))
    before = float((_mean_colour(x) - target).norm())
    after = float((moved - target).norm())
    assert after < 0.5 * before, f"A→B colour distance to B {after:.3f} vs {before:.3f} for A itself"
    assert (tmp_path / "out" / "samples" / "step_000150.png").is_file()
    assert load_generator(result.generator_b2a).config == GeneratorConfig(n_blocks=1, ngf=8)


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint_and_checks_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    dir_a, dir_b = write_images(crops(3, rng, False), tmp_path / "a"), write_images(crops(3, rng, True), tmp_path / "b")
    opts = TrainOptions(steps=2, load_size=40, crop_size=32, n_blocks=1, ngf=4, ndf=4, sample_every=0,
                        checkpoint_every=1, device="cpu")
    first = train_cyclegan(dir_a, dir_b, tmp_path / "out", opts)
    assert first.steps == 2 and (tmp_path / "out" / "checkpoint.pt").is_file()
    more = train_cyclegan(dir_a, dir_b, tmp_path / "out", replace(opts, steps=3))
    assert more.steps == 3 and len(more.history) == 1
    with pytest.raises(ModelError, match=r"different architecture.*ngf"):
        train_cyclegan(dir_a, dir_b, tmp_path / "out", replace(opts, steps=4, ngf=8))
    with pytest.raises(OptionError, match="holds no images"):
        train_cyclegan(write_images(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "empty"), dir_b, tmp_path / "x", opts)
    with pytest.raises(OptionError, match="not a directory"):
        train_cyclegan(tmp_path / "absent", dir_b, tmp_path / "x", opts)
    with pytest.raises(OptionError, match="crop_size"):
        train_cyclegan(dir_a, dir_b, tmp_path / "x", TrainOptions(crop_size=30))


# ------------------------------------------------------------------------------------------- cli


@pytest.mark.slow
def test_cli_runs_exports_and_trains(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from styletx_cli.cyclegan import main

    models = tmp_path / "models"
    models.mkdir()
    torch.save(_random_generator().state_dict(), models / "tiny.pth")
    Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    assert main(["run", "tiny", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--models-dir",
                 str(models), "--tile", "32", "--overlap", "8", "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "out.png").size == (70, 50)
    assert main(["export-onnx", str(models / "tiny.pth"), "-o", str(tmp_path / "tiny.onnx"), "--check"]) == 0
    assert "max abs difference" in capsys.readouterr().err
    assert main(["run", "nope", str(tmp_path / "in.png"), "-o", str(tmp_path / "x.png"), "--models-dir",
                 str(models)]) == 1
    assert "unknown CycleGAN model 'nope'" in capsys.readouterr().err
    rng = np.random.default_rng(2)
    dir_a, dir_b = write_images(crops(2, rng, False), tmp_path / "a"), write_images(crops(2, rng, True), tmp_path / "b")
    assert main(["train", "--a", str(dir_a), "--b", str(dir_b), "--out", str(tmp_path / "run"), "--steps", "1",
                 "--size", "32", "--n-blocks", "1", "--ngf", "4", "--ndf", "4", "--workers", "0",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "run" / "latest_net_G_A.pth").is_file()
