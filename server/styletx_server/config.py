"""Server settings: one dataclass, each field a ``--flag`` and a ``STYLETX_*`` environment variable.

Flags win over the environment, the environment over the defaults here (the usual twelve-factor
order, which is what a container's ``env:`` block and a developer's command line both expect).
Every value is checked here, before anything slow happens, and every problem is reported at once, one line
each, naming the flag and the variable (:class:`ConfigError`; ``styletx-server`` exits 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from styletx_core.version import styletx_version

from .limits import Limits

__all__ = ["ConfigError", "ServerConfig", "env_name", "load_config", "parse_config", "setting_name"]

_LIMIT_DEFAULTS = Limits()
#: Fields whose value --help must not print (it would show a secret taken from the environment).
_SECRETS = frozenset({"auth_tokens"})
#: ``styletx_core.weights.SOURCES`` (that module imports torch; a test keeps the two equal).
WEIGHT_SOURCES = ("auto", "offline", "torchvision", "file")


class ConfigError(ValueError):
    """Unusable settings; ``problems`` holds one line per problem, each naming its flag and variable."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


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
    vgg_weights: str = dataclasses.field(default="auto", metadata={"old": "weights"})
    """VGG weights source (auto, offline, torchvision, file)."""
    vgg_weights_path: str = dataclasses.field(default="", metadata={"old": "weights_path"})
    """Weights file for --vgg-weights file."""
    cache_dir: str = dataclasses.field(default="", metadata={"env": "STYLETX_CACHE", "old_env": "STYLETX_CACHE_DIR"})
    """Weights cache, as for every styletx command (default ~/.cache/styletx)."""
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


def setting_name(field: str) -> str:
    """``--metrics-port / STYLETX_METRICS_PORT``: how an error names the setting, whichever way it was given."""
    return f"--{field.replace('_', '-')} / {env_name(field)}"


def env_name(field: str) -> str:
    metadata = ServerConfig.__dataclass_fields__[field].metadata
    return str(metadata.get("env", f"STYLETX_{field.upper()}"))


def _kind(field: dataclasses.Field[Any]) -> Callable[[str], Any]:
    return {"int": int, "float": float}.get(str(field.type), str)


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """One flag per field, kept as text (converted and checked by :func:`load_config`); --help shows the value
    the environment gives."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="styletx-server",
                                     description="Serve styletx.v1.StyleTransfer over gRPC.")
    parser.add_argument("--version", action="version", version=f"styletx-server {styletx_version()}")
    docs = _field_docs()
    for field in dataclasses.fields(ServerConfig):
        env = env_name(field.name)
        shown = "(hidden)" if field.name in _SECRETS else environ.get(env, field.default)
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, default=None,
                            metavar=field.name.upper(),
                            help=f"{docs.get(field.name, '')} [env {env}; default {shown}]")
        if "old" in field.metadata:  # the former spelling still works, with a warning
            parser.add_argument(f"--{field.metadata['old'].replace('_', '-')}", dest=f"old_{field.name}",
                                default=None, help=argparse.SUPPRESS)
    return parser


def load_config(argv: Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[ServerConfig, list[str]]:
    """Flags, then ``STYLETX_*`` variables, then defaults; returns the settings and deprecation warnings.

    Raises:
        ConfigError: every unusable value, one line each.
    """
    environ = os.environ if environ is None else environ
    args = vars(build_parser(environ).parse_args(argv))
    values: dict[str, Any] = {}
    problems: list[str] = []
    warnings: list[str] = []
    for field in dataclasses.fields(ServerConfig):
        raw, source = _raw_value(field, args, environ, warnings)
        if raw is None:
            continue
        source = setting_name(field.name) if source == env_name(field.name) else source
        try:
            values[field.name] = _kind(field)(raw)
        except ValueError:
            problems.append(f"{source}={raw!r}: not {'an integer' if _kind(field) is int else 'a number'}")
    config = ServerConfig(**values)
    problems += check_config(config)  # a value that did not convert is checked as its default
    if problems:
        raise ConfigError(problems)
    return config, warnings


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    """:func:`load_config` without its warnings."""
    return load_config(argv)[0]


def _raw_value(field: dataclasses.Field[Any], args: dict[str, Any], environ: Mapping[str, str],
               warnings: list[str]) -> tuple[str | None, str]:
    """The text a setting was given as, and where from (``--port`` or ``STYLETX_PORT``)."""
    flag, env = f"--{field.name.replace('_', '-')}", env_name(field.name)
    old = str(field.metadata.get("old", ""))
    old_flag = f"--{old.replace('_', '-')}" if old else ""
    old_env = str(field.metadata.get("old_env", f"STYLETX_{old.upper()}" if old else ""))
    if args.get(field.name) is not None:
        return args[field.name], flag
    if args.get(f"old_{field.name}") is not None:
        warnings.append(f"{old_flag} is deprecated; use {flag}")
        return args[f"old_{field.name}"], old_flag
    if env in environ:
        return environ[env], env
    if old_env and old_env in environ:
        warnings.append(f"{old_env} is deprecated; use {env}")
        return environ[old_env], old_env
    return None, ""


_PORT = "0-65535"
#: field → (rule, what a valid value is)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "port": (lambda v: 0 <= v <= 65535, f"a port number, {_PORT} (0: any free port)"),
    "metrics_port": (lambda v: 0 <= v <= 65535, f"a port number, {_PORT} (0: no metrics endpoint)"),
    "workers": (lambda v: v >= 0, "0 (one per device) or more"),
    "queue_size": (lambda v: v >= 0, "0 or more"),
    **{name: (lambda v: v >= 1, "at least 1") for name in (
        "max_pixels", "max_request_pixels", "admission_memory_mb", "max_size", "max_styles", "max_receive_mb",
        "max_concurrent_streams")},
    **{name: (lambda v: v > 0, "more than 0 seconds") for name in (
        "decode_timeout", "video_slice", "video_idle", "keepalive_seconds", "keepalive_timeout_seconds")},
    **{name: (lambda v: v >= 0, "0 seconds or more") for name in ("result_ttl", "grace")},
    "log_level": (lambda v: isinstance(logging.getLevelName(v.upper()), int),
                  "a logging level (DEBUG, INFO, WARNING, ERROR)"),
    "log_format": (lambda v: v in ("json", "text"), "json or text"),
    "parity_gate": (lambda v: v in ("on", "off"), "on or off"),
    "vgg_weights": (lambda v: v in WEIGHT_SOURCES, " or ".join(WEIGHT_SOURCES)),
    "devices": (lambda v: v == "auto" or all(d.strip() for d in v.split(",")),
                "auto or a comma-separated list such as cpu or cuda:0,cuda:1"),
    "engine_factory": (lambda v: not v or (":" in v and all(v.partition(":")[::2])), "module:callable"),
}
_FILES = ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file", "vgg_weights_path", "onnx_model")


def check_config(config: ServerConfig) -> list[str]:
    """Every problem of ``config`` that can be seen without binding a port or loading the engine."""
    problems = [f"{setting_name(name)}={getattr(config, name)!r}: must be {text}"
                for name, (rule, text) in _RULES.items() if not rule(getattr(config, name))]
    problems += [f"{setting_name(name)}={getattr(config, name)!r}: no such file"
                 for name in _FILES if getattr(config, name) and not Path(getattr(config, name)).is_file()]
    if config.models_dir and not Path(config.models_dir).is_dir():
        problems.append(f"{setting_name('models_dir')}={config.models_dir!r}: no such directory")
    if bool(config.tls_cert) != bool(config.tls_key) or (config.tls_client_ca and not config.tls_cert):
        problems.append(f"{setting_name('tls_cert')} and {setting_name('tls_key')} go together, and "
                        f"{setting_name('tls_client_ca')} needs both")
    if config.vgg_weights == "file" and not config.vgg_weights_path:
        problems.append(f"{setting_name('vgg_weights')}=file needs {setting_name('vgg_weights_path')}")
    return problems


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
