"""Channel settings as option objects: TLS, keepalive, retries (as gRPC service config) and load balancing.

Retries are declared, not looped (grpc ``examples/python/retry``): gRPC retries a call that failed with
UNAVAILABLE or RESOURCE_EXHAUSTED before any response arrived, with exponential backoff, and honours the
server's ``grpc-retry-pushback-ms`` hint. A stream that has started is never replayed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from ._errors import StyletxError

__all__ = [
    "DEFAULT_KEEPALIVE", "DEFAULT_PORT", "DEFAULT_RETRY", "KeepAliveOptions", "RetryPolicy", "TLSOptions",
    "auth_metadata", "channel_options", "connection", "parse_target", "service_config",
]

DEFAULT_PORT = 50051
"""The port of a target given without one (the server's default gRPC port)."""
#: URL schemes people paste: plaintext, or TLS.
_PLAIN_SCHEMES = ("grpc://", "http://")
_TLS_SCHEMES = ("grpcs://", "https://")
#: gRPC's own name-resolver targets, passed through untouched (``dns:///host:port`` for round robin).
_RESOLVERS = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "xds:")

SERVICE = "styletx.v1.StyleTransfer"


def _read(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class TLSOptions:
    """Server authentication (and optionally client certificates for mTLS). PEM bytes or file paths.

    ``root_certificates`` None uses the system's roots.
    """

    root_certificates: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    server_name_override: str | None = None
    """For certificates issued to another name (tests, IP addresses)."""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            _read(self.root_certificates), _read(self.private_key), _read(self.certificate_chain))


def parse_target(target: str) -> tuple[str, bool]:
    """``(host:port, wants_tls)`` from what a user types.

    ``localhost`` → ``localhost:50051``; ``grpc://`` and ``http://`` are stripped (plaintext), ``https://``
    and ``grpcs://`` are stripped and mean TLS; a trailing ``/`` is dropped; gRPC resolver targets
    (``dns:///host:port``, ``unix:/path``) pass through. Anything else with ``://`` is refused.
    """
    text = target.strip()
    if text.startswith(_RESOLVERS):
        return text, False
    lowered = text.lower()
    scheme = next((s for s in (*_PLAIN_SCHEMES, *_TLS_SCHEMES) if lowered.startswith(s)), "")
    if not scheme and "://" in text:
        raise _bad_target(f"unknown scheme in {target!r}: use HOST:PORT (or grpc://, http://, https://)")
    host = text[len(scheme):].rstrip("/")
    if not host or "/" in host:
        raise _bad_target(f"not a server address: {target!r} (expected HOST:PORT)")
    has_port = host.rsplit("]", 1)[-1].count(":") == 1 if host.startswith("[") else host.count(":") == 1
    if host.count(":") > 1 and not host.startswith("["):  # a bare IPv6 address
        host = f"[{host}]"
    return (host if has_port else f"{host}:{DEFAULT_PORT}"), scheme in _TLS_SCHEMES


def _bad_target(message: str) -> StyletxError:
    return StyletxError(grpc.StatusCode.INVALID_ARGUMENT, message, {"styletx-field": "server"})


def connection(target: str | None, tls: TLSOptions | None) -> tuple[str, TLSOptions | None]:
    """The channel address and TLS settings for a user's ``target`` (``https://`` turns TLS on); None: the
    environment's ``STYLETX_SERVER``, else ``localhost``."""
    address, wants_tls = parse_target(target or os.environ.get("STYLETX_SERVER") or "localhost")
    return address, tls if tls is not None or not wants_tls else TLSOptions()


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """Call metadata carrying a bearer token (``authorization: Bearer …``); None without a token.

    Sent as plain metadata rather than call credentials, so that it also works on plaintext channels to a
    sidecar or mesh that terminates TLS; over the open network, use it with TLS.
    """
    if not token:
        return None
    if any(c in token for c in "\r\n"):
        raise ValueError("a bearer token cannot contain line breaks")
    return (("authorization", f"Bearer {token.strip()}"),)


@dataclass(frozen=True)
class KeepAliveOptions:
    """HTTP/2 pings that notice dead connections (a long job is silent between previews only briefly, but a
    queued one may wait minutes). The server accepts pings every 10 s or slower."""

    time_ms: int = 30_000
    timeout_ms: int = 10_000
    permit_without_calls: bool = True


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC ``retryPolicy``; ``max_attempts`` 1 disables retries."""

    max_attempts: int = 4
    initial_backoff: float = 0.5
    max_backoff: float = 10.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[str, ...] = field(default=("UNAVAILABLE", "RESOURCE_EXHAUSTED"))


DEFAULT_KEEPALIVE = KeepAliveOptions()
DEFAULT_RETRY = RetryPolicy()


def service_config(retry: RetryPolicy | None, load_balancing: str | None) -> str:
    """The service-config JSON: a retry policy for every StyleTransfer method and the LB policy."""
    config: dict[str, object] = {}
    if retry is not None and retry.max_attempts > 1:
        config["methodConfig"] = [{
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": retry.max_attempts,
                "initialBackoff": f"{retry.initial_backoff}s",
                "maxBackoff": f"{retry.max_backoff}s",
                "backoffMultiplier": retry.backoff_multiplier,
                "retryableStatusCodes": list(retry.retryable_codes),
            },
        }]
    if load_balancing:
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    return json.dumps(config)


def channel_options(keepalive: KeepAliveOptions | None, retry: RetryPolicy | None, load_balancing: str | None,
                    tls: TLSOptions | None, max_receive_bytes: int) -> list[tuple[str, object]]:
    """Channel arguments for ``grpc.*_channel``; use a ``dns:///host:port`` target with ``round_robin``."""
    options: list[tuple[str, object]] = [
        ("grpc.service_config", service_config(retry, load_balancing)),
        ("grpc.enable_retries", 1 if retry is not None and retry.max_attempts > 1 else 0),
        ("grpc.max_receive_message_length", max_receive_bytes),
    ]
    if keepalive is not None:
        options += [("grpc.keepalive_time_ms", keepalive.time_ms),
                    ("grpc.keepalive_timeout_ms", keepalive.timeout_ms),
                    ("grpc.keepalive_permit_without_calls", int(keepalive.permit_without_calls))]
    if tls is not None and tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", tls.server_name_override))
    return options
