"""StylizeVideo: a synthetic clip through the bidirectional RPC, in order, with bounded server memory."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from support.fake import ServerThread

from styletx_core.fast import FastStylizer, ensure_models
from styletx_core.video import StreamStylizer
from styletx_core.video.frames import FastFrames
from styletx_core.video.synthetic import pan_zoom_clip

BUFFER = 3


def encode(image: Image.Image | np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(engine: Any) -> Iterator[ServerThread]:
    ensure_models()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STYLETX_PARITY_GATE", "off")
        thread = ServerThread(lambda device: engine, workers=1, queue_size=2, parity_gate="off")
    thread.server.service.limits = thread.server.service.limits.__class__(  # type: ignore[union-attr]
        **{**thread.server.service.limits.__dict__, "video_buffer_frames": BUFFER})  # type: ignore[union-attr]
    yield thread
    thread.stop()


@pytest.fixture()
def stub(server: ServerThread) -> Iterator[pb_grpc.StyleTransferStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.StyleTransferStub(channel)


@pytest.fixture(scope="module")
def clip(content_image: Image.Image) -> list[np.ndarray]:
    return pan_zoom_clip(content_image, frames=6, size=(64, 48)).frames


def config(style: Image.Image, **fields: Any) -> pb.StylizeVideoRequest:
    return pb.StylizeVideoRequest(config=pb.VideoConfig(styles=[pb.Style(image=encode(style))],
                                                        mode=pb.MODE_FAST, **fields))


def frames(clip: list[np.ndarray]) -> Iterator[pb.StylizeVideoRequest]:
    for index, frame in enumerate(clip):
        yield pb.StylizeVideoRequest(frame=pb.VideoFrame(index=index, image=encode(frame)))


def kind(response: pb.StylizeVideoResponse) -> str:
    return str(response.WhichOneof("event"))


def test_clip_round_trips_in_order_like_the_local_pipeline(
    stub: pb_grpc.StyleTransferStub, clip: list[np.ndarray], style_image: Image.Image
) -> None:
    responses = list(stub.StylizeVideo(iter([config(style_image), *frames(clip)]), timeout=60))
    assert [kind(r) for r in responses] == ["accepted", "started", *["frame"] * len(clip), "completed"]
    out = [r.frame for r in responses if kind(r) == "frame"]
    assert [f.index for f in out] == list(range(len(clip))) and {(f.width, f.height) for f in out} == {(64, 48)}
    local = StreamStylizer(FastFrames(FastStylizer("cpu"), [style_image]), "fast")
    for frame, got in zip(clip, out, strict=True):
        image = np.asarray(Image.open(io.BytesIO(got.image)).convert("RGB"), dtype=np.float32)
        assert np.abs(image - local.process(frame)).mean() < 0.5  # same algorithm, PNG round trip
    done = responses[-1].completed
    assert done.frames == len(clip) and done.frames_per_second > 0
    assert 1 <= done.max_buffered_frames <= BUFFER


def test_a_fast_sender_and_slow_reader_keep_server_buffers_bounded(
    stub: pb_grpc.StyleTransferStub, clip: list[np.ndarray], style_image: Image.Image
) -> None:
    """The client offers 24 frames at once and reads one response per 50 ms: the server holds at most
    BUFFER frames and reads ahead of the reader by no more than that."""
    many = [clip[i % len(clip)] for i in range(24)]

    def requests() -> Iterator[pb.StylizeVideoRequest]:
        yield config(style_image, consistency=False)
        yield from frames(many)

    call = stub.StylizeVideo(requests(), timeout=120)
    received = []
    for response in call:
        if kind(response) == "frame":
            received.append(response.frame.index)
            time.sleep(0.05)
        if kind(response) == "completed":
            assert response.completed.max_buffered_frames <= BUFFER
    assert received == list(range(len(many)))


def test_protocol_errors_name_the_field(
    stub: pb_grpc.StyleTransferStub, clip: list[np.ndarray], style_image: Image.Image
) -> None:
    def error(requests: list[pb.StylizeVideoRequest]) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StylizeVideo(iter(requests), timeout=30))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        return caught.value

    first = next(frames(clip))
    assert "config" in error([first]).details()
    shuffled = [config(style_image), first, first]
    assert "frames[1].index" in error(shuffled).details()
    assert "config.alpha" in error([config(style_image, alpha=2.0)]).details()
    assert "config.styles" in error([pb.StylizeVideoRequest(config=pb.VideoConfig(mode=pb.MODE_FAST))]).details()


def test_cli_remote_video_round_trips_a_file(server: ServerThread, clip: list[np.ndarray], style_image: Image.Image,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``styletx video IN OUT --style S --server`` uses the RPC: same frame count, size and frame rate."""
    import imageio_ffmpeg
    from styletx_client.cli import main as cli_main

    source, output, style = tmp_path / "in.mp4", tmp_path / "out.mp4", tmp_path / "style.png"
    style_image.save(style)
    writer = imageio_ffmpeg.write_frames(str(source), (64, 48), fps=12, codec="libx264", macro_block_size=2)
    writer.send(None)
    for frame in clip:
        writer.send(np.ascontiguousarray(frame).tobytes())
    writer.close()
    code = cli_main(["video", str(source), str(output), "--style", str(style), "--server", server.target, "-q"])
    assert code == 0 and f"{len(clip)} frames" in capsys.readouterr().out
    reader = imageio_ffmpeg.read_frames(str(output))
    meta = next(reader)
    assert meta["size"] == (64, 48) and meta["fps"] == pytest.approx(12) and len(list(reader)) == len(clip)
    # Scripts (issue 18): --json lines end with the result; without a terminal, plain progress lines, no \r.
    assert cli_main(["video", str(source), str(output), "--style", str(style), "--server", server.target,
                     "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["frames"] == len(clip) and events[0]["event"] == "frame"
    assert cli_main(["video", str(source), str(output), "--style", str(style), "--server", server.target]) == 0
    err = capsys.readouterr().err
    assert f"frame {len(clip)}/" in err and "\r" not in err


def test_cancelling_a_stream_frees_the_worker(
    stub: pb_grpc.StyleTransferStub, clip: list[np.ndarray], style_image: Image.Image
) -> None:
    """A client that stops sending and cancels must not leave the worker waiting for frames."""
    import itertools
    import threading

    hold = threading.Event()

    def requests() -> Iterator[pb.StylizeVideoRequest]:
        yield config(style_image)
        yield from list(frames(clip))[:2]
        hold.wait(30)  # the stream stays open, sending nothing

    call = stub.StylizeVideo(requests(), timeout=60)
    got = list(itertools.islice(call, 4))  # accepted, started, two frames
    assert [kind(r) for r in got] == ["accepted", "started", "frame", "frame"]
    call.cancel()
    hold.set()
    request = pb.StylizeRequest(content=encode(clip[0]), styles=[pb.Style(image=encode(style_image))],
                                mode=pb.MODE_FAST, skip_quality=True)
    events = list(stub.Stylize(request, timeout=20))  # would wait for the stuck worker until the deadline
    assert events[-1].WhichOneof("event") == "completed"


def test_frames_obey_max_size_and_max_pixels(server: ServerThread, stub: pb_grpc.StyleTransferStub,
                                             style_image: Image.Image) -> None:
    """A frame longer than --max-size comes back reduced to it (aspect kept); one over --max-pixels is refused
    by name. (The red team's 2112×16 frame came back at 2112×16 with max_size 2048.)"""
    service = server.server.service
    assert service is not None
    saved = service.limits
    service.limits = saved.__class__(**{**saved.__dict__, "max_size": 96, "max_pixels": 20_000})
    try:
        wide = np.full((16, 160, 3), 120, dtype=np.uint8)
        wide[:, ::7] = 30
        responses = list(stub.StylizeVideo(iter([config(style_image, consistency=False), pb.StylizeVideoRequest(
            frame=pb.VideoFrame(index=0, image=encode(wide)))]), timeout=60))
        frame = next(r.frame for r in responses if kind(r) == "frame")
        assert (frame.width, frame.height) == (96, 10)  # 160×16 fitted to a long side of 96
        assert Image.open(io.BytesIO(frame.image)).size == (96, 10)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StylizeVideo(iter([config(style_image), pb.StylizeVideoRequest(
                frame=pb.VideoFrame(index=0, image=encode(Image.new("RGB", (150, 150)))))]), timeout=60))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "frames[0].image" in (caught.value.details() or "")
    finally:
        service.limits = saved
