#!/usr/bin/env python3
"""Tiny grpc.health.v1 probe: exit 0 when the server answers SERVING.

Why a script of our own: Kubernetes' native gRPC probes cannot speak TLS, Docker's HEALTHCHECK needs a
command, and no registry is reachable to pull `grpc_health_probe`. The same file serves as the image's
HEALTHCHECK (`styletx-healthcheck`), the exec probe used when the chart turns TLS on, the `helm test` pod's
first step and `deploy/test-image.sh`'s wait loop. It needs grpcio and grpcio-health-checking, never torch.

Exit codes: 0 SERVING; 1 not SERVING or unreachable (within --wait); 2 bad usage or unreadable files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_DEFAULT_PORT = 50051


def _default_addr() -> str:
    """Loopback on the port the server reads from the environment, so a bare call inside the pod works."""
    return f"127.0.0.1:{os.environ.get('STYLETX_PORT', _DEFAULT_PORT)}"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="styletx-healthcheck", description=__doc__.split("\n")[0])
    p.add_argument("--addr", default=_default_addr(), help="HOST:PORT (default: 127.0.0.1:$STYLETX_PORT)")
    p.add_argument("--service", default="", help="service name to check ('' = whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per attempt")
    p.add_argument("--wait", type=float, default=0.0, help="keep retrying for this many seconds")
    p.add_argument("--tls-ca", type=Path, default=_env_path("STYLETX_PROBE_TLS_CA"),
                   help="CA bundle: use TLS")
    p.add_argument("--tls-cert", type=Path, default=_env_path("STYLETX_PROBE_TLS_CERT"),
                   help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, default=_env_path("STYLETX_PROBE_TLS_KEY"),
                   help="client key (mutual TLS)")
    p.add_argument("--server-name", default=os.environ.get("STYLETX_PROBE_SERVER_NAME"),
                   help="TLS name to verify when it differs from the address (e.g. the Service DNS name)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p.parse_args(argv)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """Plaintext unless a CA is given; the client pair is optional (mutual TLS)."""
    if args.tls_ca is None:
        return grpc.insecure_channel(args.addr)
    key = args.tls_key.read_bytes() if args.tls_key else None
    cert = args.tls_cert.read_bytes() if args.tls_cert else None
    creds = grpc.ssl_channel_credentials(args.tls_ca.read_bytes(), key, cert)
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.addr, creds, options=options)


def _check_once(args: argparse.Namespace) -> tuple[bool, str]:
    with _channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call):
                return False, f"{err.code().name}: {err.details()}"
            return False, f"ERROR: {err}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            ok, status = _check_once(args)
        except OSError as err:  # unreadable certificate files: a configuration error, not "unhealthy"
            print(f"styletx-healthcheck: {err}", file=sys.stderr)
            return 2
        if ok or time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if not ok or not args.quiet:
        print(f"{args.addr} {args.service or '<server>'}: {status}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
