"""Export CycleGAN generators to ONNX and run ONNX-exported generators with onnxruntime.

The export (``torch.onnx.export(dynamo=True)``, through :func:`styletx_core.onnx_export.dynamo_export`) keeps
batch, height and width dynamic (multiples of 4 give an output of the input's size) and names the tensors
``image`` → ``translated``, both in [-1, 1], NCHW float32. Instance norm becomes ONNX ``InstanceNormalization``,
so an ONNX generator normalises each input on its own statistics: tiled runs of ONNX models cannot freeze
whole-image statistics the way ``tiling`` does for torch models (see ``tiling.run_tiled``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..artifacts import ort_session, write_atomic
from ..errors import ModelError
from .generator import CycleGANGenerator

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OnnxGenerator", "export_onnx"]

_LOGGER = logging.getLogger(__name__)
INPUT_NAME = "image"
OUTPUT_NAME = "translated"


def export_onnx(gen: CycleGANGenerator, path: str | Path, opset: int = 18, size: int = 256) -> Path:
    """Write ``gen`` as an ONNX model with dynamic batch/height/width (``torch.onnx.export(dynamo=True)``).

    ``size`` is only the tracing example's side; it must be a multiple of 4. Returns the path.
    """
    import onnx

    from ..onnx_export import dynamo_export

    if size % 4:
        raise ModelError(f"the example size must be a multiple of 4, got {size}")
    path = Path(path)
    gen = gen.eval().float().cpu()
    example = torch.zeros(2, gen.config.input_nc, size, size)  # batch 2: torch.export specialises a 1
    program = dynamo_export(gen, example, {0: "batch", 2: "height", 3: "width"}, input_name=INPUT_NAME,
                            output_names=[OUTPUT_NAME], opset=opset)
    program.model.metadata_props.update({"styletx.kind": "cyclegan-generator",
                                         "styletx.architecture": gen.config.describe(),
                                         "styletx.range": "[-1, 1]"})
    model = program.model_proto
    onnx.checker.check_model(model, full_check=True)
    write_atomic(path, model.SerializeToString())
    return path


class OnnxGenerator:
    """An ONNX-exported generator behind the same call signature as ``CycleGANGenerator`` (tensor → tensor).

    Args:
        path: the ``.onnx`` file; one NCHW float input with 3 channels, output of the same size.
        providers: onnxruntime execution providers; default CUDA when available, else CPU.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        self.session = ort_session(self.path, providers=providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
            raise ModelError(f"{self.path}: expected one NCHW input with 3 channels, found "
                             f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        h, w = inputs[0].shape[2:]
        self.fixed_hw: tuple[int, int] | None = (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def __call__(self, x: Tensor) -> Tensor:
        """Run on a (N, 3, H, W) tensor in [-1, 1]; the result is on ``x``'s device."""
        if self.fixed_hw is not None and tuple(x.shape[2:]) != self.fixed_hw:
            raise ModelError(f"{self.path}: this model only accepts {self.fixed_hw[0]}×{self.fixed_hw[1]} inputs")
        feed = {self.input_name: np.ascontiguousarray(x.detach().float().cpu().numpy())}
        (out,) = self.session.run([self.output_name], feed)
        return torch.from_numpy(out).to(x.device)

    def __repr__(self) -> str:
        return f"OnnxGenerator({str(self.path)!r})"
