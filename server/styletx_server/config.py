"""Server settings: one dataclass, each field a ``--flag`` and a ``STYLETX_*`` environment variable.

Flags win over the environment, the environment over the defaults here (the usual twelve-factor
order, which is what a container's ``env:`` block and a developer's command line both expect).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .limits import Limits

__all__ = ["ServerConfig", "parse_config"]

_LIMIT_DEFAULTS = Limits()
#: Fields whose value --help must not print (it would show a secret taken from the environment).
_SECRETS = frozenset({"auth_tokens"})


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``styletx-server`` can be told."""

    host: str = "[::]"
    """Address to listen on."""
    port: int = 50051
    """gRPC port (0: any free port)."""
    metrics_port: int = 9464
    """Prometheus /metrics port (0: no metrics endpoint)."""
    metrics_host: str = "0.0.0.0"
    """Address of the metrics endpoint."""
    devices: str = "auto"
    """Comma-separated devices, one worker each ("cpu", "cuda:0,cuda:1"); auto: every GPU, else the CPU."""
    workers: int = 0
    """Workers (0: one per device); more workers than devices share devices round-robin."""
    queue_size: int = _LIMIT_DEFAULTS.queue_capacity
    """Jobs that may wait for a worker; one more is refused with RESOURCE_EXHAUSTED."""
    max_pixels: int = _LIMIT_DEFAULTS.max_pixels
    """Largest decoded input image, in pixels."""
    max_request_pixels: int = _LIMIT_DEFAULTS.max_request_pixels
    """Decoded pixels of one request's images together (read from their headers before decoding)."""
    admission_memory_mb: int = _LIMIT_DEFAULTS.admission_memory_bytes // (1024 * 1024)
    """Memory admitted work may hold (queued and running jobs' images, video buffers, kept results), in MiB;
    more is refused with RESOURCE_EXHAUSTED. The engine's working memory comes on top (its memory plan)."""
    decode_timeout: float = _LIMIT_DEFAULTS.decode_timeout
    """Seconds a request's images may take to decode (slower: RESOURCE_EXHAUSTED)."""
    result_ttl: float = _LIMIT_DEFAULTS.result_ttl
    """Seconds a finished job's outcome is kept for a retry with the same request_id (within the budget)."""
    max_size: int = _LIMIT_DEFAULTS.max_size
    """Largest params.size (long side of the output)."""
    max_styles: int = _LIMIT_DEFAULTS.max_styles
    """Most style images per request."""
    max_receive_mb: int = _LIMIT_DEFAULTS.max_receive_message_bytes // (1024 * 1024)
    """Largest request, in MiB (content + styles travel in one message)."""
    grace: float = 30.0
    """Seconds running jobs get to finish after SIGTERM."""
    weights: str = "auto"
    """VGG weights source (auto, offline, torchvision, file)."""
    weights_path: str = ""
    """Weights file for --weights file."""
    cache_dir: str = ""
    """Weights cache (default $STYLETX_CACHE or ~/.cache/styletx)."""
    engine_factory: str = ""
    """module:callable building an engine for a device (default: styletx_core.engine.StyleTransfer)."""
    models_dir: str = ""
    """CycleGAN generators (NAME.pth / NAME.onnx); cached pretrained ones (vintage) are served too."""
    parity_gate: str = "on"
    """ONNX parity gate at start-up: on (NOT_SERVING when the export disagrees with torch) or off."""
    onnx_model: str = ""
    """ONNX VGG export to gate and score with (default: exported into the cache from the weights)."""
    tls_cert: str = ""
    """PEM certificate chain; with --tls-key serves TLS instead of plaintext."""
    tls_key: str = ""
    """PEM private key."""
    tls_client_ca: str = ""
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS; needs --tls-cert)."""
    auth_token_file: str = ""
    """File of bearer tokens, one per line (a mounted Kubernetes secret); re-read when it changes."""
    auth_tokens: str = dataclasses.field(default="", repr=False)
    """Comma-separated bearer tokens; prefer STYLETX_AUTH_TOKENS from a secret (flags show in ps)."""
    max_concurrent_streams: int = 16
    """Stylize/StylizeVideo calls one client connection may run at once; more wait (no queue slot meanwhile).
    GetServerInfo and health calls are not counted."""
    video_slice: float = _LIMIT_DEFAULTS.video_slice
    """Seconds of frames after which a video stream gives its worker to waiting work (then queues again)."""
    video_idle: float = _LIMIT_DEFAULTS.video_idle
    """Seconds a video stream may send no frame, or read no reply, before it is closed (DEADLINE_EXCEEDED)."""
    max_batch: int = _LIMIT_DEFAULTS.max_batch
    """Most compatible OPTIMIZE jobs optimised together in one batch (0: auto — up to 32 on a GPU, 1 on a CPU,
    always within the memory plan; 1: never batch)."""
    batch_wait_ms: float = _LIMIT_DEFAULTS.batch_wait * 1000
    """Milliseconds a worker waits for compatible companions before starting a batchable job."""
    keepalive_seconds: float = 30.0
    """Seconds between the server's HTTP/2 pings on a connection; a peer that does not answer is dropped."""
    keepalive_timeout_seconds: float = 10.0
    """Seconds a ping may wait for its answer before the connection (and its calls) is closed."""
    log_level: str = "INFO"
    """Logging level."""
    log_format: str = "json"
    """Log lines as json or text."""

    @property
    def limits(self) -> Limits:
        return Limits(max_pixels=self.max_pixels, max_size=self.max_size, max_styles=self.max_styles,
                      max_request_pixels=self.max_request_pixels,
                      admission_memory_bytes=self.admission_memory_mb * 1024 * 1024,
                      decode_timeout=self.decode_timeout, result_ttl=self.result_ttl,
                      queue_capacity=self.queue_size, calls_per_connection=self.max_concurrent_streams,
                      video_slice=self.video_slice, video_idle=self.video_idle,
                      max_receive_message_bytes=self.max_receive_mb * 1024 * 1024,
                      max_batch=self.max_batch, batch_wait=self.batch_wait_ms / 1000)

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)


def _env_name(name: str) -> str:
    return f"STYLETX_{name.upper()}"


def build_parser() -> argparse.ArgumentParser:
    """One flag per field; the environment supplies the defaults (shown in --help)."""
    parser = argparse.ArgumentParser(prog="styletx-server",
                                     description="Serve styletx.v1.StyleTransfer over gRPC.")
    docs = _field_docs()
    for field in dataclasses.fields(ServerConfig):
        kind: Callable[[Any], Any] = {"int": int, "float": float}.get(str(field.type), str)
        env = _env_name(field.name)
        default = kind(os.environ.get(env, field.default))
        shown = "(hidden)" if field.name in _SECRETS else "%(default)s"
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=default,
                            help=f"{docs.get(field.name, '')} [env {env}; default {shown}]")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    args = build_parser().parse_args(argv)
    config = ServerConfig(**vars(args))
    if config.log_format not in ("json", "text"):
        raise SystemExit("styletx-server: --log-format must be json or text")
    if bool(config.tls_cert) != bool(config.tls_key) or (config.tls_client_ca and not config.tls_cert):
        raise SystemExit("styletx-server: --tls-cert and --tls-key go together, and --tls-client-ca needs both")
    if config.max_concurrent_streams < 1:
        raise SystemExit("styletx-server: --max-concurrent-streams must be at least 1")
    return config


def _field_docs() -> dict[str, str]:
    """The attribute docstrings above, so --help and the code cannot disagree."""
    import ast
    import inspect
    import itertools

    tree = ast.parse(inspect.getsource(ServerConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = str(following.value.value)
    return docs
