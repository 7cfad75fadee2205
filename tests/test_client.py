"""The SDK (sync and asyncio) against an in-process server with the fake engine."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import styletx_client as client
from PIL import Image
from styletx_client import AsyncClient, Client, RetryPolicy, StyletxError
from support.fake import FakeEngine, ServerThread
from support.requests import png, wait_for

from styletx_core.options import StylizeOptions

SMALL: dict[str, Any] = {"size": 64, "min_size": 32, "iterations": 2, "coarse_iterations": 1}


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine(step_seconds=0.01)


@pytest.fixture(scope="module")
def server(engine: FakeEngine) -> Iterator[ServerThread]:
    thread = ServerThread(lambda device: engine, workers=1, queue_size=4)
    yield thread
    thread.stop()


@pytest.fixture()
def sdk(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=30) as c:
        yield c


def test_public_api_is_declared() -> None:
    assert all(hasattr(client, name) for name in client.__all__)
    assert not [
        n
        for n in vars(client)
        if not n.startswith("_")
        and n not in client.__all__
        and not isinstance(getattr(client, n), type(client))
    ]


def test_stylize_returns_image_and_metrics(sdk: Client) -> None:
    seen: list[str] = []
    out = sdk.stylize(
        png(),
        [png((32, 32))],
        seed=3,
        optimizer="adam",
        on_event=lambda e: seen.append(type(e).__name__),
        **SMALL,
    )
    assert seen[0] == "Accepted" and seen[-1] == "Completed" and "Progress" in seen
    expected = FakeEngine.expected(Image.open(io.BytesIO(png())), StylizeOptions(size=64))
    assert out.image.convert("RGB").tobytes() == expected.tobytes()
    assert out.seed == 3 and out.format == "png" and (out.width, out.height) == expected.size
    assert out.metrics["equivalent_iterations"] > 0 and out.timings["total_seconds"] > 0
    assert [p.iteration for p in out.history] == list(range(1, out.iterations + 1))


def test_style_weights_and_pil_inputs(sdk: Client) -> None:
    content = Image.open(io.BytesIO(png()))
    out = sdk.stylize(content, [(png((32, 32)), 2.0), (content, 1.0)], output_format="jpeg", **SMALL)
    assert out.format == "jpeg" and out.image.format == "JPEG"


def test_stream_cancel_stops_the_job(sdk: Client, engine: FakeEngine) -> None:
    before = engine.cancelled
    stream = sdk.stylize_stream(png(), [png()], **{**SMALL, "iterations": 500})
    for event in stream:
        if isinstance(event, client.Progress):
            stream.cancel()
            break
    assert wait_for(lambda: engine.cancelled == before + 1)


def test_errors_are_one_type_naming_the_field(sdk: Client) -> None:
    with pytest.raises(StyletxError) as caught:
        sdk.stylize(png(), [png()], size=4)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.field == "params.size"
    assert error.message.startswith("params.size:") and error.__cause__ is None and error.__suppress_context__
    with pytest.raises(StyletxError) as caught:
        sdk.stylize(png(), [png()], optimizer="sgd")
    assert caught.value.field == "params.optimizer"
    with pytest.raises(TypeError, match="unknown option 'sizee'; did you mean 'size'"):
        sdk.stylize(png(), [png()], sizee=64)


def test_deadline_is_an_error(sdk: Client) -> None:
    with pytest.raises(StyletxError) as caught:
        sdk.stylize(png(), [png()], timeout=0.3, **{**SMALL, "iterations": 500})
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_info_and_health(sdk: Client) -> None:
    assert sdk.health() == "SERVING" and sdk.health("styletx.v1.StyleTransfer") == "SERVING"
    info = sdk.server_info()
    assert info.limits.queue_capacity == 4 and info.defaults.size == StylizeOptions().size


def test_async_client_has_the_same_methods(server: ServerThread) -> None:
    public = {n for n in dir(Client) if not n.startswith("_")} - {"close"}
    assert public <= {n for n in dir(AsyncClient) if not n.startswith("_")}

    async def run() -> tuple[str, int]:
        async with AsyncClient(server.target, timeout=30) as c:
            status = await c.health()
            out = await c.stylize(png(), [png()], seed=5, **SMALL)
            return status, out.seed

    assert asyncio.run(run()) == ("SERVING", 5)


def test_service_config_declares_retries_and_round_robin() -> None:
    config = json.loads(client.service_config(RetryPolicy(max_attempts=3), "round_robin"))
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["maxAttempts"] == 3 and set(policy["retryableStatusCodes"]) == {
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
    }
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert json.loads(client.service_config(None, None)) == {}


def test_unavailable_is_retried_until_the_server_is_up(engine: FakeEngine) -> None:
    """The first attempts find nothing listening; the retry policy's backoff bridges the gap."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers: list[ServerThread] = []
    starter = threading.Timer(0.4, lambda: servers.append(ServerThread(lambda d: engine, port=port)))
    starter.start()
    try:
        policy = RetryPolicy(max_attempts=5, initial_backoff=0.3, max_backoff=1.0)
        with Client(f"dns:///127.0.0.1:{port}", retry=policy, load_balancing="round_robin", timeout=20) as c:
            start = time.monotonic()
            out = c.stylize(png(), [png()], **SMALL)
        assert out.iterations > 0 and time.monotonic() - start >= 0.3
    finally:
        starter.join()
        for s in servers:
            s.stop()
