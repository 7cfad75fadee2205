"""The gRPC service in-process (127.0.0.1, ephemeral port) with a fake engine, and once with the real one."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from styletx_server.config import ConfigError
from styletx_server.events import result_chunks
from styletx_server.validation import params_to_options
from support.fake import FakeEngine, ServerThread
from support.requests import encode, kind, png, request, wait_for

from styletx_core.options import StylizeOptions


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine(step_seconds=0.02)


@pytest.fixture(scope="module")
def server(engine: FakeEngine) -> Iterator[ServerThread]:
    thread = ServerThread(lambda device: engine, workers=1, queue_size=2, max_pixels=100_000, max_styles=3)
    yield thread
    thread.stop()


@pytest.fixture()
def stub(server: ServerThread) -> Iterator[pb_grpc.StyleTransferStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.StyleTransferStub(channel)


def test_job_streams_events_in_order_and_image_round_trips(stub: pb_grpc.StyleTransferStub) -> None:
    events = list(stub.Stylize(request(preview_every=2, seed=7), timeout=30))
    kinds = [kind(e) for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "completed"
    assert kinds.index("started") < kinds.index("progress") < kinds.index("result_chunk")
    assert "preview" in kinds and kinds.index("result_chunk") > max(
        i for i, k in enumerate(kinds) if k == "preview"
    )
    started = next(e.started for e in events if kind(e) == "started")
    steps = [e.progress.iteration for e in events if kind(e) == "progress"]
    assert steps == list(range(1, started.total_iterations + 1)) and started.seed == 7
    assert len({e.job_id for e in events}) == 1
    data = b"".join(e.result_chunk.data for e in events if kind(e) == "result_chunk")
    completed = events[-1].completed
    assert hashlib.sha256(data).hexdigest() == completed.result_sha256 and completed.seed == 7
    expected = FakeEngine.expected(Image.open(io.BytesIO(png())), StylizeOptions(size=64))
    assert Image.open(io.BytesIO(data)).convert("RGB").tobytes() == expected.tobytes()
    assert completed.timings.total_seconds >= completed.timings.run_seconds > 0
    assert completed.iterations == started.total_iterations


def test_seed_is_drawn_and_reported_when_unset(stub: pb_grpc.StyleTransferStub) -> None:
    events = list(stub.Stylize(request(iterations=1, coarse_iterations=0), timeout=30))
    started = next(e.started for e in events if kind(e) == "started")
    assert started.seed == events[-1].completed.seed


def test_result_is_chunked_below_one_mebibyte() -> None:
    data = bytes(range(256)) * 9000  # 2.2 MiB
    chunks = [e.result_chunk for e in result_chunks("j", data, "png", (1, 1), 1 << 20)]
    assert [c.offset for c in chunks] == [0, 1 << 20, 2 << 20] and all(len(c.data) <= 1 << 20 for c in chunks)
    assert b"".join(c.data for c in chunks) == data and {c.total_size for c in chunks} == {len(data)}


def test_cancel_frees_the_worker_within_an_iteration(
    server: ServerThread, stub: pb_grpc.StyleTransferStub, engine: FakeEngine
) -> None:
    cancelled_before = engine.cancelled
    call = stub.Stylize(request(iterations=500), timeout=60)
    for event in call:
        if kind(event) == "progress":
            break
    call.cancel()
    assert wait_for(lambda: engine.cancelled == cancelled_before + 1), "the engine was never told to stop"
    start = time.monotonic()
    second = stub.Stylize(request(iterations=1), timeout=30)
    for event in second:
        if kind(event) == "started":
            break
    # One fake iteration is 20 ms; allow scheduling noise on a shared machine but far below the 10 s job.
    assert time.monotonic() - start < 1.0
    second.cancel()  # and wait for it to end, so that the next test counts only its own cancellations
    assert wait_for(lambda: server.server.service.queue.running == 0)  # type: ignore[union-attr]


def test_deadline_exceeded_stops_the_job(stub: pb_grpc.StyleTransferStub, engine: FakeEngine) -> None:
    cancelled_before = engine.cancelled
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Stylize(request(iterations=500), timeout=0.5))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: engine.cancelled == cancelled_before + 1), "the job went on after its deadline"


def test_full_queue_is_resource_exhausted_with_retry_hint(stub: pb_grpc.StyleTransferStub) -> None:
    running = stub.Stylize(request(iterations=500), timeout=60)
    assert [kind(next(running)), kind(next(running))] == ["accepted", "started"]
    waiting, accepted = [], []
    for _ in range(2):  # queue_size=2; one after the other: two calls in flight may be admitted in either order
        waiting.append(stub.Stylize(request(iterations=1), timeout=60))
        accepted.append(next(waiting[-1]).accepted)
    assert [a.queue_position for a in accepted] == [0, 1]
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Stylize(request(iterations=1), timeout=10))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.trailing_metadata())
    assert int(trailers["retry-after-ms"]) > 0
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry) and retry.retry_delay.ToMilliseconds() > 0
    waiting[0].cancel()  # the second waiting job moves up
    update = next(waiting[1])
    assert kind(update) == "queue_update" and update.queue_update.queue_position == 0
    running.cancel()
    kinds = [kind(e) for e in waiting[1]]
    assert kinds[0] == "started" and kinds[-1] == "completed"


def _broken(r: pb.StylizeRequest, **changes: Any) -> pb.StylizeRequest:
    for path, value in changes.items():
        target: Any = r
        *parents, name = path.split(".")
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(value, list):
            del getattr(target, name)[:]
            getattr(target, name).extend(value)
        else:
            setattr(target, name, value)
    return r


def _grey(value: int, size: tuple[int, int] = (40, 30)) -> bytes:
    return encode(Image.new("L", size, value), "png")


def _speck() -> bytes:
    """A 300×300 mask with one lit pixel: less than a pixel's worth once resized to the 64 px output."""
    image = Image.new("L", (300, 300), 0)
    image.putpixel((10, 10), 255)
    return encode(image, "png")


BAD_INPUTS = {
    "empty content": (dict(content=b""), "content"),
    "undecodable content": (dict(content=b"not an image"), "content"),
    "too many pixels": (dict(content=png((400, 400))), "content"),
    "no styles": (dict(styles=[]), "styles"),
    "too many styles": (dict(styles=[pb.Style(image=png())] * 4), "styles"),
    "undecodable style": (dict(styles=[pb.Style(image=png()), pb.Style(image=b"GIF89a")]), "styles[1].image"),
    "negative weight": (dict(styles=[pb.Style(image=png(), weight=-1)]), "styles[0].weight"),
    "size too small": ({"params.size": 8}, "params.size"),
    "size above server limit": ({"params.size": 5000}, "params.size"),
    "NaN learning rate": ({"params.learning_rate": float("nan")}, "params.learning_rate"),
    "unknown optimizer": ({"params.optimizer": 99}, "params.optimizer"),
    "unknown layer": ({"params.content_layers": ["relu9_9"]}, "params.content_layers"),
    "layer weights count": ({"params.style_layer_weights": [1.0, 2.0]}, "params.style_layer_weights"),
    "unknown output format": (dict(output_format=42), "output_format"),
    "unknown preview format": ({"preview.format": 42}, "preview.format"),
    "blank mask": (dict(styles=[pb.Style(image=png(), mask=_grey(0))]), "styles[0].mask"),
    "mask covers nothing": (dict(styles=[pb.Style(image=png()), pb.Style(image=png(), mask=_speck())]),
                            "styles[1].mask"),
    "undecodable mask": (dict(styles=[pb.Style(image=png(), mask=b"GIF89a")]), "styles[0].mask"),
    "unknown style layer": (dict(styles=[pb.Style(image=png(), layers=["relu9_9"])]), "styles[0].layers"),
    "style layer weights count": (dict(styles=[pb.Style(image=png(), layers=["relu1_1"], layer_weights=[1, 2])]),
                                  "styles[0].layer_weights"),
    "undecodable content strength": (dict(content_strength=b"nope"), "content_strength"),
}


@pytest.mark.parametrize("changes,field", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_invalid_argument_naming_the_field(
    stub: pb_grpc.StyleTransferStub, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Stylize(_broken(request(), **changes), timeout=10))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}: ")
    trailers = dict(error.trailing_metadata())
    assert trailers["styletx-field"] == field
    bad_request = error_details_pb2.BadRequest()
    status_pb2.Status.FromString(trailers["grpc-status-details-bin"]).details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == field


def test_masks_layers_and_content_strength_reach_the_engine(
    stub: pb_grpc.StyleTransferStub, engine: FakeEngine
) -> None:
    sky = _grey(255, (90, 30))
    r = request()
    r.styles.extend([pb.Style(image=png(), mask=sky, layers=["relu4_1", "relu5_1"], layer_weights=[1, 3])])
    r.content_strength = _grey(128)
    assert kind(list(stub.Stylize(r, timeout=10))[-1]) == "completed"
    controls, strength = engine.last_regions
    assert controls[0] is None and controls[1].mask.size == (90, 30)
    assert controls[1].layers == ("relu4_1", "relu5_1") and controls[1].layer_weights == (1.0, 3.0)
    assert strength is not None and strength.size == (40, 30)


def test_mode_the_server_does_not_offer_is_unimplemented(server: ServerThread, stub: pb_grpc.StyleTransferStub,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.server.service, "modes", frozenset({pb.MODE_OPTIMIZE}))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Stylize(_broken(request(), mode=pb.MODE_FAST), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED and "mode" in caught.value.details()


def test_server_info_publishes_limits_and_defaults(stub: pb_grpc.StyleTransferStub) -> None:
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert info.limits.max_receive_message_bytes == 64 * 1024 * 1024
    assert (
        info.limits.max_pixels == 100_000 and info.limits.max_styles == 3 and info.limits.queue_capacity == 2
    )
    assert info.limits.max_chunk_bytes == 1 << 20 and info.limits.workers == 1
    assert params_to_options(info.defaults, None) == StylizeOptions()
    assert list(info.modes) == [pb.MODE_OPTIMIZE, pb.MODE_FAST, pb.MODE_PRESET, pb.MODE_HYBRID, pb.MODE_CYCLEGAN]
    assert [d.name for d in info.devices] == ["cpu"]
    assert {"vgg16", "vgg19", "magenta-arbitrary", "multistyle26"} <= {m.name for m in info.models} and info.version


def test_health_and_reflection(server: ServerThread) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "styletx.v1.StyleTransfer"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"styletx.v1.StyleTransfer", "grpc.health.v1.Health"} <= services


def test_metrics_count_jobs_iterations_and_cache_hits(
    stub: pb_grpc.StyleTransferStub, server: ServerThread
) -> None:
    from prometheus_client import generate_latest

    assert server.server.service is not None
    registry = server.server.service.metrics.registry
    before = registry.get_sample_value("styletx_style_cache_hits_total") or 0.0
    for _ in range(2):
        list(stub.Stylize(request(iterations=1, coarse_iterations=0), timeout=30))
    assert (registry.get_sample_value("styletx_style_cache_hits_total") or 0) >= before + 1
    assert (registry.get_sample_value("styletx_jobs_total", {"code": "OK"}) or 0) >= 2
    assert (registry.get_sample_value("styletx_iterations_total") or 0) >= 2
    text = generate_latest(registry).decode()
    assert "styletx_queue_depth 0.0" in text and "styletx_job_seconds_bucket" in text


def test_concurrent_clients_are_served_in_order(server: ServerThread) -> None:
    """Two jobs at once on one worker: the second waits (position 0) and still completes."""
    results: list[list[str]] = [[], []]

    def run(index: int) -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            results[index] = [kind(e) for e in stub.Stylize(request(iterations=2), timeout=30)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r and r[0] == "accepted" and r[-1] == "completed" for r in results)


def test_port_in_use_fails_at_start(server: ServerThread, engine: FakeEngine) -> None:
    with pytest.raises(ConfigError, match="cannot listen"):
        ServerThread(lambda device: engine, port=server.port)


def test_real_engine_job(engine_real: Any) -> None:
    """The real StyleTransfer (random VGG weights) behind the service: a 64 px job, two iterations."""
    thread = ServerThread(lambda device: engine_real, workers=1)
    try:
        with grpc.insecure_channel(thread.target) as channel:
            r = request(iterations=2, coarse_iterations=0, min_size=64, preview_every=1, seed=1)
            events = list(pb_grpc.StyleTransferStub(channel).Stylize(r, timeout=120))
    finally:
        thread.stop()
    kinds = [kind(e) for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "completed" and kinds.count("progress") == 2
    assert kinds.count("preview") == 2
    image = Image.open(io.BytesIO(b"".join(e.result_chunk.data for e in events if kind(e) == "result_chunk")))
    assert max(image.size) == 64
    assert "loss_style" in events[-1].completed.metrics or events[-1].completed.metrics


@pytest.fixture(scope="module")
def engine_real(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("engine")
