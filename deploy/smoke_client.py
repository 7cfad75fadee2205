#!/usr/bin/env python3
"""One tiny stylisation through the client SDK: the end-to-end check of a deployed server.

Used by `deploy/test-image.sh` (host python against the container) and by the Helm chart's `helm test` pod
(inside the image as `styletx-smoke`). The images are generated here (64 px), so nothing needs mounting; the
job is a few iterations at one scale so that it finishes in seconds even on one CPU core.

Exit codes: 0 the job completed and the result decodes to an image; 1 the job failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

_DEFAULT_PORT = 50051


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="styletx-smoke", description=__doc__.split("\n")[0])
    p.add_argument("--addr", default=f"127.0.0.1:{os.environ.get('STYLETX_PORT', _DEFAULT_PORT)}",
                   help="target, HOST:PORT or a gRPC URI such as dns:///styletx-headless:50051")
    p.add_argument("--size", type=int, default=64, help="output long side in pixels")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--optimizer", help="engine optimizer (default: the server's)")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline of the call, seconds")
    p.add_argument("--out", type=Path, help="write the result image here")
    p.add_argument("--round-robin", action="store_true",
                   help="balance per call over every address the target resolves to (dns:/// targets)")
    p.add_argument("--tls-ca", type=Path, help="CA bundle: use TLS")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    p.add_argument("--server-name", help="TLS name to verify when it differs from the target")
    return p.parse_args(argv)


def _content(size: int) -> Image.Image:
    """A gradient with a disc: structure for the content loss to keep."""
    img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    ImageDraw.Draw(img).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(200, 40, 40))
    return img


def _style(size: int) -> Image.Image:
    """Stripes: a texture whose Gram matrix differs clearly from the content's."""
    img = Image.new("RGB", (size, size), (20, 30, 120))
    draw = ImageDraw.Draw(img)
    for x in range(0, size, 8):
        draw.line((x, 0, x, size), fill=(240, 200, 30), width=3)
    return img


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # The SDK under test; imported late so that --help works without it.
    from styletx_client import Client, StyletxError, TLSOptions

    tls = TLSOptions(root_certificates=args.tls_ca, private_key=args.tls_key,
                     certificate_chain=args.tls_cert, server_name_override=args.server_name) \
        if args.tls_ca else None
    started = time.monotonic()
    try:
        with Client(args.addr, tls=tls, timeout=args.timeout,
                    load_balancing="round_robin" if args.round_robin else None) as client:
            params = {"optimizer": args.optimizer} if args.optimizer else {}
            result = client.stylize(_content(args.size), [_style(args.size)],
                                    size=args.size, iterations=args.iterations, seed=1, **params)
    except StyletxError as err:
        print(f"styletx-smoke: job failed: {err}", file=sys.stderr)
        return 1
    image = result.image
    if max(image.size) != args.size or (result.width, result.height) != image.size:
        print(f"styletx-smoke: result is {image.size} (reported {result.width}x{result.height}), "
              f"expected long side {args.size}", file=sys.stderr)
        return 1
    if args.out:
        result.save(args.out)
    print(f"styletx-smoke: {args.addr}: job {result.job_id} {image.size[0]}x{image.size[1]}, "
          f"{result.iterations} iterations in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
