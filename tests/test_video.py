"""Video (styletx_core.video): I/O round trip, optical flow against known motion, temporal consistency,
resuming, and the OPTIMIZE/HYBRID frame stylisers' use of the engine."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from styletx_core.errors import Cancelled, ImageError, OptionError
from styletx_core.options import StylizeOptions
from styletx_core.progress import StylizeResult
from styletx_core.video import (
    FlowEstimator,
    FrameWriter,
    StreamStylizer,
    TemporalGuide,
    TemporalLoss,
    probe,
    read_frames,
    stylize_video,
    warp,
    warping_error,
)
from styletx_core.video.synthetic import SyntheticClip, pan_zoom_clip


@pytest.fixture(scope="module")
def scene(shared_images: Path) -> Image.Image:
    return Image.open(shared_images / "content" / "tubingen.jpg").convert("RGB")


@pytest.fixture(scope="module")
def clip(scene: Image.Image) -> SyntheticClip:
    return pan_zoom_clip(scene, frames=8, size=(128, 96), pan=(2.0, 1.0), zoom=1.01)


def _write(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    with FrameWriter(path, (frames[0].shape[1], frames[0].shape[0]), fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def _with_audio(video: Path, output: Path) -> Path:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(video),
                    "-f", "lavfi", "-i", "sine=frequency=440", "-map", "0:v", "-map", "1:a", "-c:v", "copy",
                    "-c:a", "aac", "-shortest", str(output)], check=True)
    return output


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def identity(frame: Image.Image, guide: TemporalGuide | None) -> Image.Image:
    return frame


# -------------------------------------------------------------------------------------------------- I/O


def test_round_trip_keeps_count_fps_and_size(tmp_path: Path, clip: SyntheticClip) -> None:
    path = _write(tmp_path / "clip.mp4", clip.frames, fps=12.5)
    info = probe(path)
    assert info.size == (128, 96) and info.fps == pytest.approx(12.5) and info.audio_codec is None
    decoded = list(read_frames(path))
    assert len(decoded) == len(clip.frames)
    assert min(_psnr(a, b) for a, b in zip(decoded, clip.frames, strict=True)) > 30


def test_stylize_video_round_trip_with_audio(tmp_path: Path, clip: SyntheticClip) -> None:
    source = _with_audio(_write(tmp_path / "v.mp4", clip.frames, fps=12), tmp_path / "av.mp4")
    seen: list[tuple[int, int]] = []
    report = stylize_video(source, tmp_path / "out.mp4", identity, progress=lambda d, t: seen.append((d, t)),
                           size=100)
    assert (report.frames, report.size, report.audio) == (8, (100, 74), True)
    info = probe(tmp_path / "out.mp4")
    assert info.fps == pytest.approx(12) and info.size == (100, 74) and info.audio_codec == "aac"
    assert len(list(read_frames(tmp_path / "out.mp4"))) == 8
    assert [d for d, _ in seen] == list(range(1, 9)) and seen[-1][1] == 8
    assert not list(tmp_path.glob(".out*"))  # staging file and work dir are gone


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such video"):
        stylize_video(tmp_path / "none.mp4", tmp_path / "o.mp4", identity)
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ImageError, match="cannot read"):
        stylize_video(tmp_path / "junk.mp4", tmp_path / "o.mp4", identity)
    with pytest.raises(OptionError) as info:
        stylize_video(tmp_path / "junk.mp4", tmp_path / "o.mp4", identity, mode="slow")
    assert info.value.field == "mode"
    with pytest.raises(OptionError, match="output"):
        stylize_video(tmp_path / "junk.mp4", tmp_path / "o.gif", identity)


# ------------------------------------------------------------------------------------------------ flow


def test_flow_matches_the_known_motion(clip: SyntheticClip) -> None:
    estimator = FlowEstimator()
    for t in (1, 4):
        pair = estimator.pair(clip.frames[t - 1], clip.frames[t])
        truth, valid = clip.backward_flows[t - 1], clip.masks[t - 1] > 0
        error = np.linalg.norm(pair.backward - truth, axis=2)
        assert np.median(error[valid]) < 0.3  # pixels; the motion is ≈ 2–3 px per frame
        assert np.median(np.linalg.norm(truth, axis=2)[valid]) > 1.5
        current = clip.frames[t].astype(np.float32)
        warped = warp(clip.frames[t - 1], pair.backward).astype(np.float32)
        unwarped = np.abs(clip.frames[t - 1] - current)[valid].mean()
        assert np.abs(warped - current)[valid].mean() < 0.4 * unwarped


def test_occlusion_mask_drops_what_enters_the_frame(clip: SyntheticClip) -> None:
    pair = FlowEstimator().pair(clip.frames[2], clip.frames[3])
    truth = clip.masks[2] > 0
    assert pair.coverage > 0.9
    assert (pair.mask[~truth] == 0).mean() > 0.9  # new content at the border is masked
    assert (pair.mask[truth] == 1).mean() > 0.9


def test_occlusion_mask_finds_a_disocclusion() -> None:
    rng = np.random.default_rng(1)
    background = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    square = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    previous, current = background.copy(), background.copy()
    previous[32:64, 40:72] = square
    current[32:64, 52:84] = square  # the square moved right by 12 px, uncovering x ∈ [40, 52)
    pair = FlowEstimator().pair(previous, current)
    assert pair.mask[36:60, 42:50].mean() < 0.5
    assert pair.mask[5:25, 5:120].mean() > 0.9


# -------------------------------------------------------------------------------------------- temporal


def test_temporal_blend_reduces_warping_error(clip: SyntheticClip, style_image: Image.Image) -> None:
    from styletx_core.fast import FastStylizer
    from styletx_core.video.frames import FastFrames

    stylizer = FastStylizer("cpu")
    outputs = {}
    for consistency in (False, True):
        stream = StreamStylizer(FastFrames(stylizer, [style_image]), "fast", consistency)
        outputs[consistency] = [stream.process(frame) for frame in clip.frames]
    per_frame = warping_error(outputs[False], clip.backward_flows, clip.masks)
    consistent = warping_error(outputs[True], clip.backward_flows, clip.masks)
    assert consistent < 0.6 * per_frame, (per_frame, consistent)


def test_restore_detail_gives_the_blend_back_its_contrast() -> None:
    from styletx_core.video import restore_detail

    rng = np.random.default_rng(0)
    base = np.full((64, 64, 3), 0.5, dtype=np.float32)
    current = base + 0.2 * rng.standard_normal((64, 64, 3)).astype(np.float32)
    previous = base + 0.2 * rng.standard_normal((64, 64, 3)).astype(np.float32)
    blended = 0.5 * current + 0.5 * previous  # independent textures: contrast drops by √2
    restored = restore_detail(blended, current)
    assert blended.std() < 0.8 * current.std()
    assert restored.std() == pytest.approx(current.std(), rel=0.1)
    assert abs(float(restored.mean()) - 0.5) < 0.01
    # Still the blend's pattern, not the current frame's: correlation with both inputs stays balanced.
    corr = [np.corrcoef(restored.ravel(), x.ravel())[0, 1] for x in (current, previous)]
    assert abs(corr[0] - corr[1]) < 0.1


def test_stream_refuses_a_size_change(clip: SyntheticClip) -> None:
    stream = StreamStylizer(identity)
    stream.process(clip.frames[0])
    with pytest.raises(ImageError, match="frame 1"):
        stream.process(clip.frames[1][:64])


def test_temporal_loss_is_masked_and_resizes() -> None:
    target = torch.rand(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    loss = TemporalLoss(target, mask, weight=2.0)
    image = target.clone()
    image[..., 4:] = 0  # differs only where the mask is 0
    assert float(loss(image)) == 0.0
    image[..., 0] += 0.5
    assert float(loss(image)) == pytest.approx(2.0 * 0.25 * 255**2 * 8 * 3 / (3 * 64), rel=1e-5)
    assert loss(torch.rand(1, 3, 4, 4)).shape == ()
    assert "weight=2" in repr(loss)


# --------------------------------------------------------------------------------------------- resume


class CountingStylizer:
    fingerprint = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frame: Image.Image, guide: TemporalGuide | None) -> Image.Image:
        self.calls += 1
        return Image.fromarray(255 - np.asarray(frame))


@pytest.mark.slow
def test_resume_continues_after_the_last_finished_frame(tmp_path: Path, clip: SyntheticClip) -> None:
    source = _write(tmp_path / "v.mp4", clip.frames, fps=10)

    def stop_after_three(done: int, total: int) -> None:
        if done == 3:
            raise Cancelled("stop")

    first = CountingStylizer()
    with pytest.raises(Cancelled):
        stylize_video(source, tmp_path / "out.mp4", first, resume=True, progress=stop_after_three)
    work = tmp_path / ".out.mp4.styletx-work"
    assert first.calls == 3 and len(list(work.glob("frame_*.png"))) == 3
    second = CountingStylizer()
    report = stylize_video(source, tmp_path / "out.mp4", second, resume=True)
    assert (second.calls, report.resumed_from, report.frames) == (5, 3, 8)
    assert not work.exists()
    straight = stylize_video(source, tmp_path / "straight.mp4", CountingStylizer(), resume=True)
    resumed = list(read_frames(tmp_path / "out.mp4"))
    assert straight.frames == len(resumed) == 8
    reference = read_frames(tmp_path / "straight.mp4")
    assert all(np.array_equal(a, b) for a, b in zip(resumed, reference, strict=True))


def test_another_jobs_work_dir_is_not_reused(tmp_path: Path, clip: SyntheticClip) -> None:
    source = _write(tmp_path / "v.mp4", clip.frames[:3], fps=10)
    work = tmp_path / "work"
    stylize_video(source, tmp_path / "a.mp4", CountingStylizer(), resume=True, work_dir=work,
                  keep_work_dir=True)
    other = CountingStylizer()
    other.fingerprint = "another style"
    stylize_video(source, tmp_path / "b.mp4", other, resume=True, work_dir=work)
    assert other.calls == 3


# ------------------------------------------------------------------------------------- optimize / hybrid


class FakeEngine:
    """Records what the frame stylisers ask of ``StyleTransfer.stylize`` (with the extra_losses hook)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def stylize(self, content: Image.Image, styles: Any, opts: StylizeOptions, callback: Any = None,
                init_image: Image.Image | None = None, extra_losses: Any = None) -> StylizeResult:
        self.calls.append({"opts": opts, "init": init_image, "extra": extra_losses, "size": content.size})
        image = init_image if init_image is not None else content
        return StylizeResult(image=image, seed=0, iterations=opts.iterations, equivalent_iterations=0.0,
                             elapsed=0.0)


def test_optimize_frames_start_from_the_warped_previous_output(clip: SyntheticClip,
                                                               style_image: Image.Image) -> None:
    from styletx_core.video.frames import OptimizeFrames

    engine = FakeEngine()
    frames = OptimizeFrames(engine, [style_image], StylizeOptions(size=64, iterations=10), later_iterations=3)
    stream = StreamStylizer(frames, "optimize")
    for frame in clip.frames[:3]:
        stream.process(frame)
    first, later = engine.calls[0], engine.calls[1]
    assert first["init"] is None and first["extra"] is None and first["opts"].size == 128
    assert later["opts"].iterations == 3 and later["opts"].min_size == later["opts"].size == 128
    assert later["init"] is not None and isinstance(later["extra"]["temporal"], TemporalLoss)


def test_hybrid_frames_start_from_the_fast_result(clip: SyntheticClip, style_image: Image.Image) -> None:
    from styletx_core.fast import FastStylizer
    from styletx_core.video.frames import HybridFrames

    engine = FakeEngine()
    frames = HybridFrames(engine, FastStylizer("cpu"), [style_image], StylizeOptions(iterations=4))
    stream = StreamStylizer(frames, "hybrid")
    outputs = [stream.process(frame) for frame in clip.frames[:2]]
    assert all(call["init"] is not None for call in engine.calls)
    assert engine.calls[1]["extra"] is not None
    fast_first = np.asarray(frames.fast(Image.fromarray(clip.frames[0]), None))
    assert np.array_equal(outputs[0], fast_first)  # the fake engine returns its init: the fast result


def test_optimize_frames_run_on_the_real_engine(engine: Any, clip: SyntheticClip,
                                                style_image: Image.Image) -> None:
    from styletx_core.video.frames import OptimizeFrames

    opts = StylizeOptions(iterations=1, min_size=32, optimizer="adam")
    stream = StreamStylizer(OptimizeFrames(engine, [style_image.resize((32, 24))], opts), "optimize")
    small = [np.asarray(Image.fromarray(f).resize((32, 24))) for f in clip.frames[:2]]
    outputs = [stream.process(frame) for frame in small]
    assert all(o.shape == (24, 32, 3) for o in outputs)


def test_optimize_frames_keep_a_fixed_mask(engine: Any, clip: SyntheticClip, style_image: Image.Image) -> None:
    from styletx_core.regions import StyleControl
    from styletx_core.video.frames import OptimizeFrames

    top = np.zeros((24, 32), np.uint8)
    top[:12] = 255
    opts = StylizeOptions(iterations=6, min_size=32, init="content", style_weight=50.0)
    frames = OptimizeFrames(engine, [style_image.resize((32, 24))], opts, later_iterations=4,
                            controls=[StyleControl(mask=Image.fromarray(top, "L"))])
    stream = StreamStylizer(frames, "optimize")
    small = [np.asarray(Image.fromarray(f).resize((32, 24))) for f in clip.frames[:2]]
    for frame in small:
        change = np.abs(stream.process(frame).astype(np.float32) - frame.astype(np.float32))
        assert change[14:].mean() < 0.5 * change[:10].mean(), (change[14:].mean(), change[:10].mean())


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_video(tmp_path: Path, clip: SyntheticClip, style_image: Image.Image) -> None:
    from styletx_cli.video import main

    source = _write(tmp_path / "v.mp4", clip.frames[:4], fps=8)
    style = tmp_path / "s.png"
    style_image.save(style)
    assert main([str(source), str(tmp_path / "fast.mp4"), "--style", str(style), "--size", "64",
                 "--device", "cpu"]) == 0
    info = probe(tmp_path / "fast.mp4")
    assert info.size == (64, 48) and info.fps == pytest.approx(8)
    assert main([str(source), str(tmp_path / "preset.mkv"), "--preset", "style04", "--max-frames", "2"]) == 0
    assert len(list(read_frames(tmp_path / "preset.mkv"))) == 2
    assert main([str(source), str(tmp_path / "x.mp4"), "--preset", "style99"]) == 2
    assert main([str(source), str(tmp_path / "x.mp4"), "--preset", "style01", "--mode", "optimize"]) == 2
    assert main([str(tmp_path / "missing.mp4"), str(tmp_path / "x.mp4"), "--style", str(style)]) == 1
