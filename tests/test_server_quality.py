"""Quality scores on every Completed event, and the ONNX parity gate at start-up, through the service.

The engine runs on random VGG weights (conftest); the server exports them to ONNX (cached by digest), gates
the export against torch and scores results with it.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from styletx_client import Client
from styletx_client.cli import main as cli_main
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from styletx_server.config import ServerConfig
from support.fake import FakeEngine, ServerThread


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def gate_result(target: str, timeout: float = 120.0) -> pb.ParityGate:
    """GetServerInfo's gate once it has run (a server started without app.py's prepare() gates in the
    background)."""
    end = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        while True:
            parity = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).parity
            if parity.message != "not run yet" or time.monotonic() > end:
                return parity
            time.sleep(0.1)


def start(factory: Any, **settings: Any) -> ServerThread:
    with pytest.MonkeyPatch.context() as patch:  # what the service reads when app.py passes no config
        for name, value in settings.items():
            patch.setenv(f"STYLETX_{name.upper()}", value)
        return ServerThread(factory, workers=1, queue_size=2, max_size=256, **settings)


@pytest.fixture(scope="module")
def server(engine: Any) -> Iterator[ServerThread]:
    thread = start(lambda device: engine, parity_gate="on")
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def images(content_image: Image.Image, style_image: Image.Image) -> tuple[Image.Image, Image.Image]:
    return content_image.resize((64, 48)), style_image.resize((64, 64))


def test_parity_gate_passes_and_is_reported(server: ServerThread) -> None:
    parity = gate_result(server.target)
    assert parity.checked and parity.ok, parity.message
    assert 0 <= parity.max_error <= parity.tolerance and set(parity.layer_errors) >= {"relu1_1", "relu4_2"}
    assert parity.provider == "CPUExecutionProvider" and Path(parity.onnx_path).is_file()


@pytest.mark.slow
def test_completed_carries_quality_scores_that_the_sdk_types(
    server: ServerThread, images: tuple[Image.Image, Image.Image]
) -> None:
    from styletx_core.onnx_export import OnnxFeatures
    from styletx_core.scoring import QualityScorer

    content, style = images
    parity = gate_result(server.target)
    with Client(server.target, retry=None) as client:
        output = client.stylize(encode(content), [encode(style)], mode="fast", size=64, timeout=120)
    quality = output.quality
    assert quality is not None, output.quality_unavailable
    assert list(quality.style_distance) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    assert quality.style_distance_mean == pytest.approx(sum(quality.style_distance.values()) / 5)
    assert quality.scorer.startswith("vgg19") and output.timings["score_seconds"] > 0
    local = QualityScorer(OnnxFeatures(parity.onnx_path)).score(content, [style], output.image, layout=False)
    assert quality.content_distance == pytest.approx(local.content_distance, rel=1e-5)
    assert quality.color_distance == pytest.approx(local.color_distance, rel=1e-5)
    assert quality.style_distance == pytest.approx(local.style_distance, rel=1e-5)


def test_cli_prints_the_quality(server: ServerThread, images: tuple[Image.Image, Image.Image], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    images[0].save(content)
    images[1].save(style)
    code = cli_main(["stylize", str(content), str(style), "-o", str(tmp_path / "out.png"), "--mode", "fast",
                     "--size", "64", "--server", server.target, "-q"])
    assert code == 0
    assert "quality: style" in capsys.readouterr().out


def test_scoring_unavailable_is_reported_not_failed(images: tuple[Image.Image, Image.Image]) -> None:
    """An engine without VGG weights (the fake) cannot score: the job still succeeds and says why."""
    thread = start(lambda device: FakeEngine(device, step_seconds=0))
    try:
        assert not gate_result(thread.target).checked  # skipped: nothing to compare
        with Client(thread.target, retry=None) as client:
            output = client.stylize(encode(images[0]), [encode(images[1])], size=32, min_size=32, iterations=1)
        assert output.quality is None and "VGG weights" in output.quality_unavailable
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def corrupt_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "vgg19.onnx"
    path.write_bytes(b"\x08\x07not an onnx model at all")
    return path


def test_failing_gate_refuses_jobs_and_reports_why(engine: Any, corrupt_onnx: Path,
                                                   images: tuple[Image.Image, Image.Image]) -> None:
    thread = start(lambda device: engine, parity_gate="on", onnx_model=str(corrupt_onnx))
    try:
        parity = gate_result(thread.target)
        assert parity.checked and not parity.ok and "not a valid ONNX model" in parity.message
        request = pb.StylizeRequest(content=encode(images[0]), styles=[pb.Style(image=encode(images[1]))],
                                    mode=pb.MODE_FAST)
        with grpc.insecure_channel(thread.target) as channel, pytest.raises(grpc.RpcError) as caught:
            list(pb_grpc.StyleTransferStub(channel).Stylize(request, timeout=30))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "parity gate" in caught.value.details()
    finally:
        thread.stop()


def test_prepare_refuses_to_serve_with_a_failing_gate(engine: Any, corrupt_onnx: Path) -> None:
    """The contract the server start-up uses: prepare() answers whether to report SERVING."""
    from styletx_server.limits import Limits
    from styletx_server.service import StyleTransferService

    async def prepare() -> tuple[bool, pb.ParityGate]:
        service = StyleTransferService([engine], ["cpu"], Limits(), pb.GetServerInfoResponse())
        ok = await service.prepare(ServerConfig(onnx_model=str(corrupt_onnx)))
        return ok, service.parity

    ok, parity = asyncio.run(prepare())
    assert not ok and not parity.ok and str(corrupt_onnx) in parity.onnx_path


def test_failing_gate_reports_not_serving(engine: Any, corrupt_onnx: Path) -> None:
    thread = start(lambda device: engine, parity_gate="on", onnx_model=str(corrupt_onnx))
    try:
        with grpc.insecure_channel(thread.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        thread.stop()
