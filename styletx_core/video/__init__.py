"""Video stylisation with temporal consistency.

:func:`stylize_video` decodes with the ffmpeg that ``imageio-ffmpeg`` bundles, stylises each frame through a
:class:`FrameStylizer` (ready ones in :mod:`styletx_core.video.frames`), keeps frames consistent with dense
optical flow (DIS, forward and backward, occlusions from their disagreement), and writes H.264 at the source's
frame rate with its audio. Finished frames can be kept in a work directory so that a long run resumes.

The lower layers are public for the service's streaming RPC, which has frames but no files:
:class:`FlowEstimator`, :func:`warp`, :class:`TemporalGuide`, :func:`blend_previous`, :class:`StreamStylizer`.
"""

from ._flow import FLOW_METHODS, FlowEstimator, FramePairFlow, occlusion_mask, warp
from ._io import FrameWriter, VideoInfo, even_size, probe, read_frames
from ._pipeline import MODES, FrameStylizer, ProgressFn, StreamStylizer, VideoReport, stylize_video
from ._temporal import TemporalGuide, TemporalLoss, blend_previous, guided_init, restore_detail, warping_error

__all__ = [
    "FLOW_METHODS",
    "MODES",
    "FlowEstimator",
    "FramePairFlow",
    "FrameStylizer",
    "FrameWriter",
    "ProgressFn",
    "StreamStylizer",
    "TemporalGuide",
    "TemporalLoss",
    "VideoInfo",
    "VideoReport",
    "blend_previous",
    "even_size",
    "guided_init",
    "occlusion_mask",
    "probe",
    "read_frames",
    "restore_detail",
    "stylize_video",
    "warp",
    "warping_error",
]
