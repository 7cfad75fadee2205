"""Compatible jobs batched by the server's scheduler: the queue's grouping (fake runners) and the real engine
behind a real server (random VGG weights, 64 px)."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from styletx_server.job import Job
from styletx_server.limits import Limits
from styletx_server.queue import JobQueue
from styletx_server.service import max_batch
from support.fake import ServerThread
from support.requests import encode, kind, request
from support.rounding import flip_lowest_bit, pixel_bound

from styletx_core.batch import fitting_batch
from styletx_core.engine import StyleTransfer
from styletx_core.options import StylizeOptions


class _Work:
    def queued(self, job_id: str, position: int) -> pb.StylizeEvent:
        return pb.StylizeEvent(job_id=job_id, queue_update=pb.QueueUpdate(queue_position=position))


def _job(name: str, key: object, positions: dict[str, list[int]]) -> Job:
    def emit(event: pb.StylizeEvent) -> None:
        positions.setdefault(name, []).append(event.queue_update.queue_position)

    job = Job(_Work(), emit, batch_key=None if key is None else (key,))  # type: ignore[arg-type]
    job.id = name
    return job


def test_queue_batches_compatible_jobs_fifo_and_reports_true_positions() -> None:
    dispatched: list[list[str]] = []
    positions: dict[str, list[int]] = {}

    async def scenario() -> None:
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def runner(job: Job, worker: int) -> None:
            dispatched.append([job.id])

        def batch_runner(jobs: list[Job], worker: int) -> list[BaseException | None]:
            dispatched.append([j.id for j in jobs])
            return [None] * len(jobs)

        done: list[str] = []
        queue = JobQueue(runner, lambda job, error: done.append(job.id), workers=1, capacity=16,
                         batch_runner=batch_runner, max_batch=2, batch_wait=0.0)
        blocker = _job("blocker", None, positions)
        queue._runner = lambda job, worker: asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        queue.submit(blocker)
        queue.start()
        await asyncio.sleep(0.05)  # the worker holds the blocker: the next jobs queue up behind it
        queue._runner = runner
        for name, key in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("a3", "a"), ("c", None)]:
            queue.submit(_job(name, key, positions))
        release.set()
        while len(done) < 6:
            await asyncio.sleep(0.01)
        queue.close()
        await queue.join()

    asyncio.run(scenario())
    # The head always goes first; a batch takes its compatible companions (oldest first, at most max_batch).
    assert dispatched == [["a1", "a2"], ["b1"], ["a3"], ["c"]]
    # Positions count the jobs still waiting ahead: a3 moved from 3 to 1 when a1 and a2 left together.
    assert positions["a3"][:2] == [1, 0] and positions["c"][:3] == [2, 1, 0]


def test_auto_max_batch_is_one_on_cpu_and_bounded_on_gpu() -> None:
    assert max_batch(Limits(), ["cpu"]) == 1
    assert max_batch(Limits(), ["cuda:0"]) == 32
    assert max_batch(Limits(max_batch=4), ["cpu"]) == 4


def test_a_batch_is_split_to_fit_the_memory_plan(random_vgg_weights) -> None:
    opts = StylizeOptions(size=64, min_size=64, iterations=2, coarse_iterations=0)
    one = StyleTransfer(device="cpu").memory_plan([(64, 48)], opts)[0]
    per_job = StyleTransfer(device="cpu").memory_plan([(64, 48)], opts, batch=2)[0].estimate_bytes - one.estimate_bytes
    engine = StyleTransfer(device="cpu", weights="file", weights_path=random_vgg_weights,
                           memory_budget=one.estimate_bytes + 2 * per_job)
    assert fitting_batch(engine, opts, (64, 48), 8) == 3
    assert fitting_batch(engine, opts, (64, 48), 2) == 2


def _stylize(target: str, r: pb.StylizeRequest, cancel_after: int | None = None) -> list[pb.StylizeEvent]:
    events: list[pb.StylizeEvent] = []
    with grpc.insecure_channel(target) as channel:
        call = pb_grpc.StyleTransferStub(channel).Stylize(r, timeout=300)
        try:
            for event in call:
                events.append(event)
                if cancel_after is not None and kind(event) == "progress" and event.progress.iteration >= cancel_after:
                    call.cancel()
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.CANCELLED
    return events


def _image(events: list[pb.StylizeEvent]) -> np.ndarray:
    data = b"".join(e.result_chunk.data for e in events if kind(e) == "result_chunk")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _nudged(original: pb.StylizeRequest) -> pb.StylizeRequest:
    """``original`` with one content bit flipped (``support.rounding.flip_lowest_bit``)."""
    copy = pb.StylizeRequest()
    copy.CopyFrom(original)
    copy.content = encode(flip_lowest_bit(Image.open(io.BytesIO(original.content))), "png")
    return copy


def test_server_batches_jobs_each_streams_its_own_events(engine: Any) -> None:
    thread = ServerThread(lambda device: engine, workers=1, max_batch=4, batch_wait_ms=1500)
    params = {"iterations": 6, "coarse_iterations": 3}
    requests = [request(seed=1, **params), request(seed=2, content_weight=0.5, **params),
                request(seed=3, style_weight=5.0, **params)]
    outcomes: list[list[pb.StylizeEvent]] = [[], [], []]
    try:
        threads = [threading.Thread(target=lambda i=i: outcomes.__setitem__(
            i, _stylize(thread.target, requests[i], cancel_after=4 if i == 1 else None))) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        alone = _stylize(thread.target, requests[0])
        nudged_alone = _stylize(thread.target, _nudged(requests[0]))
        metrics = thread.server.service.metrics.registry
        batches = metrics.get_sample_value("styletx_batch_size_count")
        batched_jobs = metrics.get_sample_value("styletx_batch_size_sum")
    finally:
        thread.stop()
    assert (batches, batched_jobs) == (3, 5), "the three concurrent jobs ran as one batch, the two solo runs alone"
    for i in (0, 2):
        kinds = [kind(e) for e in outcomes[i]]
        assert kinds[0] == "accepted" and kinds[-1] == "completed", kinds
        steps = [e.progress.iteration for e in outcomes[i] if kind(e) == "progress"]
        total = next(e.started.total_iterations for e in outcomes[i] if kind(e) == "started")
        assert steps == list(range(1, total + 1)) and {e.job_id for e in outcomes[i]} == {outcomes[i][0].job_id}
        timings = outcomes[i][-1].completed.timings
        assert 0 < timings.events_seconds < timings.run_seconds < timings.total_seconds
    assert "completed" not in [kind(e) for e in outcomes[1]], "the cancelled job stopped"
    # Batched and solo runs round differently: within the allowance or the solo run's rounding floor.
    floor = np.abs(_image(nudged_alone) - _image(alone)).mean()
    assert np.abs(_image(outcomes[0]) - _image(alone)).mean() <= pixel_bound(floor)
    assert _image(outcomes[0]).tolist() != _image(outcomes[2]).tolist()


def test_progress_reports_only_fresh_losses_but_checks_cancel_every_iteration() -> None:
    """A batch on a GPU reads its losses every few iterations (``Iterate.loss_fresh``): the stream carries
    those iterations only, while a cancel is still seen at the very next iteration."""
    from styletx_server.image_job import Progress

    from styletx_core.errors import Cancelled
    from styletx_core.progress import Iterate

    sent: list[pb.StylizeEvent] = []
    job = Job(_Work(), sent.append)  # type: ignore[arg-type]
    progress = Progress(job, request=None)  # type: ignore[arg-type]  # no previews offered: never read

    def step(iteration: int, fresh: bool) -> Iterate:
        return Iterate(iteration=iteration, total_iterations=9, scale_index=0, scale_count=1, width=8, height=8,
                       loss=1.0, losses={}, elapsed=0.0, eta=0.0, peak_memory_bytes=0, loss_fresh=fresh)

    for iteration, fresh in ((1, True), (2, False), (3, False), (4, True)):
        progress(step(iteration, fresh))
    assert [e.progress.iteration for e in sent] == [1, 4]
    job.cancel.set()
    with pytest.raises(Cancelled):  # between two reads
        progress(step(5, False))
