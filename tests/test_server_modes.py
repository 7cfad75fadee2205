"""FAST, PRESET, HYBRID and CYCLEGAN through the gRPC service: real networks on 64 px images.

The feed-forward models come from the default cache (fetched once from the package index, see
tests/test_fast.py); the CycleGAN tests use a tiny random generator in a models directory and the cached
``vintage`` generator when it is prepared. The optimisation engine runs on random VGG weights (conftest).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from conftest import require_tool
from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from support.fake import ServerThread

from styletx_core.fast import FastStylizer, PresetStylizer, ensure_models


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def content(content_image: Image.Image) -> Image.Image:
    return content_image.resize((64, 48), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def styles(style_image: Image.Image, second_style_image: Image.Image) -> list[Image.Image]:
    return [style_image.resize((64, 64)), second_style_image.resize((64, 64))]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding one tiny random generator ("tiny": 2 blocks, ngf 8)."""
    from styletx_core.cyclegan import CycleGANGenerator, GeneratorConfig

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("models")
    generator = CycleGANGenerator(GeneratorConfig(n_blocks=2, ngf=8, affine=True))
    torch.save(generator.state_dict(), directory / "tiny.pth")
    return directory


@pytest.fixture(scope="module")
def server(engine: Any, models_dir: Path) -> Iterator[ServerThread]:
    ensure_models()
    with pytest.MonkeyPatch.context() as patch:  # read by the service whether or not app.py passes its config
        patch.setenv("STYLETX_MODELS_DIR", str(models_dir))
        patch.setenv("STYLETX_PARITY_GATE", "off")
        thread = ServerThread(lambda device: engine, workers=1, queue_size=4, max_size=256,
                              models_dir=str(models_dir), parity_gate="off")
    yield thread
    thread.stop()


@pytest.fixture()
def stub(server: ServerThread) -> Iterator[pb_grpc.StyleTransferStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.StyleTransferStub(channel)


def request(content: Image.Image, styles: list[tuple[Image.Image, float]], mode: pb.Mode.ValueType,
            **fields: Any) -> pb.StylizeRequest:
    params = fields.pop("params", {})
    return pb.StylizeRequest(content=encode(content), mode=mode, skip_quality=fields.pop("skip_quality", True),
                             styles=[pb.Style(image=encode(s), weight=w) for s, w in styles],
                             params=pb.StylizeParams(**params), **fields)


def run(stub: pb_grpc.StyleTransferStub, req: pb.StylizeRequest) -> tuple[list[pb.StylizeEvent], Image.Image]:
    events = list(stub.Stylize(req, timeout=60))
    data = b"".join(e.result_chunk.data for e in events if e.WhichOneof("event") == "result_chunk")
    return events, Image.open(io.BytesIO(data)).convert("RGB")


def invalid(stub: pb_grpc.StyleTransferStub, req: pb.StylizeRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Stylize(req, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


# ------------------------------------------------------------------------------------------------------ FAST


def test_fast_streams_the_optimize_events_and_matches_in_process(
    stub: pb_grpc.StyleTransferStub, content: Image.Image, styles: list[Image.Image]
) -> None:
    events, image = run(stub, request(content, [(styles[0], 1.0), (styles[1], 3.0)], pb.MODE_FAST,
                                      params={"size": 64}))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[:3] == ["accepted", "started", "progress"] and kinds[-2:] == ["result_chunk", "completed"]
    assert image.size == (64, 48)
    local = FastStylizer("cpu").stylize(content, styles, weights=[1.0, 3.0], size=64)
    assert mean_difference(image, local) < 0.5  # PNG round trip of the same computation
    assert events[-1].completed.quality_unavailable.startswith("skipped")


def test_fast_blend_weights_and_strength_reach_the_network(
    stub: pb_grpc.StyleTransferStub, content: Image.Image, styles: list[Image.Image]
) -> None:
    first = run(stub, request(content, [(styles[0], 1.0), (styles[1], 0.0)], pb.MODE_FAST))[1]
    second = run(stub, request(content, [(styles[0], 0.0), (styles[1], 1.0)], pb.MODE_FAST))[1]
    weak = run(stub, request(content, [(styles[0], 1.0)], pb.MODE_FAST, fast=pb.FastParams(strength=0.0)))[1]
    fast = FastStylizer("cpu")
    assert mean_difference(first, fast.stylize(content, [styles[0]])) < 0.5
    assert mean_difference(second, fast.stylize(content, [styles[1]])) < 0.5
    assert mean_difference(weak, fast.stylize(content, [styles[0]], strength=0.0)) < 0.5
    assert mean_difference(first, second) > 5 and mean_difference(first, weak) > 5


def test_fast_output_size_defaults_to_the_content_and_is_capped(
    stub: pb_grpc.StyleTransferStub, content: Image.Image, styles: list[Image.Image]
) -> None:
    big = content.resize((320, 240))
    assert run(stub, request(big, [(styles[0], 1.0)], pb.MODE_FAST))[1].size == (256, 192)  # max_size 256
    small = run(stub, request(big, [(styles[0], 1.0)], pb.MODE_FAST, params={"size": 40},
                              fast=pb.FastParams(processing_size=32)))[1]
    assert small.size == (40, 30)
    error = invalid(stub, request(content, [(styles[0], 1.0)], pb.MODE_FAST, params={"size": 512}))
    assert "params.size" in error.details()
    error = invalid(stub, request(content, [(styles[0], 1.0)], pb.MODE_FAST, fast=pb.FastParams(strength=1.5)))
    assert dict(error.trailing_metadata())["styletx-field"] == "fast.strength"


def test_style_embeddings_are_cached_across_jobs(
    server: ServerThread, stub: pb_grpc.StyleTransferStub, content: Image.Image, styles: list[Image.Image]
) -> None:
    fast = server.server.service.models.fast("cpu")  # type: ignore[union-attr]
    odd_style = styles[0].rotate(90)
    before = fast.embedding_cache_info()["size"]
    for _ in range(2):
        run(stub, request(content, [(odd_style, 1.0)], pb.MODE_FAST))
    assert fast.embedding_cache_info()["size"] == before + 1


def _top_half(size: tuple[int, int] = (64, 48)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0], size[1] // 2))
    return mask


def test_fast_masks_composite_each_style_in_its_region(
    stub: pb_grpc.StyleTransferStub, content: Image.Image, styles: list[Image.Image]
) -> None:
    top, bottom = _top_half(), Image.eval(_top_half(), lambda v: 255 - v)
    req = request(content, [(styles[0], 1.0), (styles[1], 1.0)], pb.MODE_FAST, params={"size": 64})
    req.styles[0].mask, req.styles[1].mask = encode(top), encode(bottom)
    image = np.asarray(run(stub, req)[1], dtype=np.float32)
    fast = FastStylizer("cpu")
    first, second = (np.asarray(fast.stylize(content, [s], size=64), dtype=np.float32) for s in styles)
    # Away from the feathered edge, each half is its own style's result.
    assert np.abs(image[:18] - first[:18]).mean() < 1.0 and np.abs(image[30:] - second[30:]).mean() < 1.0
    assert np.abs(image[:18] - second[:18]).mean() > 5


def test_hybrid_refines_the_regional_composite(
    stub: pb_grpc.StyleTransferStub, content: Image.Image, styles: list[Image.Image]
) -> None:
    params = {"size": 64, "min_size": 32, "iterations": 2, "coarse_iterations": 2, "seed": 1,
              "optimizer": pb.OPTIMIZER_ADAM}
    req = request(content, [(styles[0], 1.0)], pb.MODE_HYBRID, params=params)
    req.styles[0].mask = encode(_top_half())
    image = np.asarray(run(stub, req)[1], dtype=np.float32)
    fast = np.asarray(FastStylizer("cpu").stylize(content, [styles[0]], size=64), dtype=np.float32)
    photo = np.asarray(content, dtype=np.float32)
    # The masked top starts from the fast result, the rest from the photo, and each stays near its start.
    assert np.abs(image[:18] - fast[:18]).mean() < np.abs(image[:18] - photo[:18]).mean()
    assert np.abs(image[30:] - photo[30:]).mean() < np.abs(image[30:] - fast[30:]).mean()


# ---------------------------------------------------------------------------------------------------- PRESET


def test_preset_runs_and_unknown_names_are_invalid(stub: pb_grpc.StyleTransferStub, content: Image.Image) -> None:
    image = run(stub, request(content, [], pb.MODE_PRESET, preset="style07"))[1]
    local = PresetStylizer("cpu").stylize(content, "style07")
    assert image.size == (64, 48) and mean_difference(image, local) < 0.5
    error = invalid(stub, request(content, [], pb.MODE_PRESET, preset="style7x"))
    assert dict(error.trailing_metadata())["styletx-field"] == "preset" and "style07" in error.details()


def test_region_presets_paint_their_masks_over_the_request_preset(
    stub: pb_grpc.StyleTransferStub, content: Image.Image
) -> None:
    req = request(content, [], pb.MODE_PRESET, preset="style07")
    req.styles.add(preset="style12", mask=encode(_top_half()))
    image = np.asarray(run(stub, req)[1], dtype=np.float32)
    presets = PresetStylizer("cpu")
    base, region = (np.asarray(presets.stylize(content, name), dtype=np.float32) for name in ("style07", "style12"))
    # Away from the feathered edge: the region's preset on top, the request's preset below.
    assert np.abs(image[:18] - region[:18]).mean() < 1.0 and np.abs(image[30:] - base[30:]).mean() < 1.0
    assert np.abs(image[:18] - base[:18]).mean() > 5


@pytest.mark.parametrize(("mode", "style", "field"), [
    (pb.MODE_PRESET, {"preset": "style7x", "mask": "top"}, "styles[0].preset"),
    (pb.MODE_PRESET, {"preset": "style12"}, "styles[0].mask"),
    (pb.MODE_PRESET, {"preset": "style12", "mask": "top", "image": "content"}, "styles[0].image"),
    (pb.MODE_PRESET, {"preset": "style12", "mask": "blank"}, "styles[0].mask"),
    (pb.MODE_FAST, {"preset": "style12", "image": "content"}, "styles[0].preset"),
])
def test_bad_region_presets_name_their_field(stub: pb_grpc.StyleTransferStub, content: Image.Image, mode: int,
                                             style: dict[str, str], field: str) -> None:
    req = request(content, [], mode, preset="style07" if mode == pb.MODE_PRESET else "")
    images = {"top": encode(_top_half()), "blank": encode(Image.new("L", (64, 48), 0)), "content": encode(content)}
    req.styles.add(preset=style["preset"], mask=images.get(style.get("mask", ""), b""),
                   image=images.get(style.get("image", ""), b""))
    assert dict(invalid(stub, req).trailing_metadata())["styletx-field"] == field


# ---------------------------------------------------------------------------------------------------- HYBRID


def test_hybrid_refines_the_fast_result_at_the_last_two_scales(
    stub: pb_grpc.StyleTransferStub, content: Image.Image, styles: list[Image.Image]
) -> None:
    # Adam: two L-BFGS steps from a good start need not lower the loss, and the engine keeps its best iterate.
    params = {"size": 64, "min_size": 32, "iterations": 2, "coarse_iterations": 2, "seed": 1,
              "optimizer": pb.OPTIMIZER_ADAM}
    events, image = run(stub, request(content, [(styles[0], 1.0)], pb.MODE_HYBRID, params=params))
    started = next(e.started for e in events if e.WhichOneof("event") == "started")
    assert list(started.scales) == [45, 64] and started.total_iterations == 4  # the coarser ones are skipped
    assert [e.progress.iteration for e in events if e.WhichOneof("event") == "progress"] == [1, 2, 3, 4]
    fast = FastStylizer("cpu").stylize(content, [styles[0]], size=64)
    assert image.size == (64, 48) and 0 < mean_difference(image, fast) < 40  # refined, not replaced


# -------------------------------------------------------------------------------------------------- CYCLEGAN


def test_cyclegan_unknown_model_lists_the_known_ones(
    stub: pb_grpc.StyleTransferStub, content: Image.Image
) -> None:
    error = invalid(stub, request(content, [], pb.MODE_CYCLEGAN, model_name="monet"))
    assert dict(error.trailing_metadata())["styletx-field"] == "model_name" and "tiny" in error.details()


def test_cyclegan_job_is_tiled_as_requested(
    stub: pb_grpc.StyleTransferStub, content: Image.Image, models_dir: Path
) -> None:
    """The RPC runs the library's tiled inference with the request's tile and overlap (seam quality itself is
    tests/test_cyclegan's), reporting one progress step per tile."""
    from styletx_core.cyclegan import load_generator, run_tiled, tile_count

    events, image = run(stub, request(content, [], pb.MODE_CYCLEGAN, model_name="tiny",
                                      cyclegan=pb.CycleGANParams(tile=32, overlap=8)))
    steps = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert len(steps) == tile_count(64, 48, 32, 8) > 1 and steps[-1].iteration == steps[-1].total_iterations
    generator = load_generator(models_dir / "tiny.pth")
    tiled, whole = run_tiled(generator, content, 32, 8), run_tiled(generator, content, 512)
    assert image.size == (64, 48) and mean_difference(image, tiled) < 0.5
    assert mean_difference(image, whole) > mean_difference(image, tiled)
    error = invalid(stub, request(content, [], pb.MODE_CYCLEGAN, model_name="tiny",
                                  cyclegan=pb.CycleGANParams(tile=30)))
    assert dict(error.trailing_metadata())["styletx-field"] == "cyclegan.tile"


def test_cyclegan_vintage_is_served_by_name(stub: pb_grpc.StyleTransferStub, content: Image.Image) -> None:
    from styletx_core.cyclegan import cached_pretrained

    require_tool(cached_pretrained("vintage") is not None,
                 "the vintage generator is not prepared (styletx weights fetch)")
    image = run(stub, request(content, [], pb.MODE_CYCLEGAN, model_name="vintage"))[1]
    assert image.size == (64, 48) and mean_difference(image, content) > 1


def test_server_info_lists_models_presets_and_modes(stub: pb_grpc.StyleTransferStub) -> None:
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    modes = {m.name: list(m.modes) for m in info.models}
    assert modes["tiny"] == [pb.MODE_CYCLEGAN] and pb.MODE_FAST in modes["magenta-arbitrary"]
    assert len(info.presets) == 26 and "style07" in info.presets
    assert set(info.modes) >= {pb.MODE_FAST, pb.MODE_PRESET, pb.MODE_HYBRID, pb.MODE_CYCLEGAN}
    assert info.limits.video_buffer_frames > 0 and info.limits.max_frame_bytes < 4 * 1024 * 1024
