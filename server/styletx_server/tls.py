"""Server TLS and mutual TLS from PEM files, as a Kubernetes ``kubernetes.io/tls`` secret mounts them.

The files are read at start-up (a missing or unreadable one stops the server with one clear line) and
again for new connections after they change: cert-manager renews a mounted secret in place, and the server
picks the new certificate up without a restart. Connections already open keep the certificate they began with.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import grpc

__all__ = ["server_credentials"]

_LOGGER = logging.getLogger(__name__)


class _CertificateFiles:
    """The certificate, key and (for mTLS) client CA files, and the configuration they last gave."""

    def __init__(self, cert: str, key: str, client_ca: str | None) -> None:
        self._paths = [Path(p) for p in (cert, key, client_ca) if p]
        self._stamp = self._stamps()
        self.initial = self._configuration()

    def _stamps(self) -> tuple[int, ...]:
        try:
            return tuple(p.stat().st_mtime_ns for p in self._paths)
        except OSError as error:
            raise OSError(f"cannot read TLS file {error.filename}: {error.strerror}") from None

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        _check(*self._paths)
        cert, key, *ca = (p.read_bytes() for p in self._paths)
        return grpc.ssl_server_certificate_configuration([(key, cert)], ca[0] if ca else None)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration when a file changed, else None."""
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return None
            configuration = self._configuration()
        except OSError as error:  # half-written during a rotation: keep serving the old certificate
            _LOGGER.warning("TLS files unreadable, keeping the current certificate: %s", error)
            return None
        self._stamp = stamp
        _LOGGER.info("TLS certificate files changed; new connections use the new certificate")
        return configuration


def _check(cert: Path, key: Path, client_ca: Path | None = None) -> None:
    """Parse the PEM files with the ssl module first: gRPC would only say "Failed to bind to address"."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.load_verify_locations(client_ca)
    except ssl.SSLError as error:
        files = ", ".join(str(p) for p in (cert, key, client_ca) if p)
        raise OSError(f"unusable TLS files ({files}): {error.reason or error}") from None


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with ``client_ca`` clients must present a certificate it signed."""
    files = _CertificateFiles(cert, key, client_ca)
    return grpc.dynamic_ssl_server_credentials(files.initial, files.fetch,
                                               require_client_authentication=bool(client_ca))
