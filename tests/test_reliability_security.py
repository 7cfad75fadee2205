"""Security: TLS and mutual TLS from mounted files, bearer tokens, request limits, streams per connection,
safe weight loading, and no request field that could name a server-side file.

Certificates are made in the test with ``cryptography`` (EC P-256, one CA, server and client leaves), laid out
as a Kubernetes ``kubernetes.io/tls`` secret mounts them (``tls.crt``, ``tls.key``, ``ca.crt``).
"""

from __future__ import annotations

import ast
import datetime
import ipaddress
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from styletx_client import Client, StyletxError, TLSOptions
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from styletx_server import auth
from styletx_server.config import ConfigError, parse_config
from support.fake import FakeEngine, ServerThread
from support.requests import encode

x509 = pytest.importorskip("cryptography.x509", reason="the dev extra provides cryptography")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JOB: dict[str, Any] = {"size": 32, "min_size": 32, "iterations": 1, "coarse_iterations": 0}


# ------------------------------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pair:
    cert: bytes
    key: bytes
    private: Any


def _name(common: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def issue(common: str, issuer: Pair | None, *, server: bool = False, client: bool = False) -> Pair:
    """A certificate for ``common`` signed by ``issuer`` (self-signed CA when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signer = issuer.private if issuer else key
    issuer_name = x509.load_pem_x509_certificate(issuer.cert).subject if issuer else _name(common)
    builder = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    return Pair(cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()), key)


def mount(directory: Path, pair: Pair, ca: Pair) -> Path:
    """Write a secret the way Kubernetes mounts it: tls.crt, tls.key, ca.crt."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(pair.cert)
    (directory / "tls.key").write_bytes(pair.key)
    (directory / "ca.crt").write_bytes(ca.cert)
    return directory


@dataclass(frozen=True)
class PKI:
    ca: Pair
    server: Path
    client: Path
    rogue_client: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    base = tmp_path_factory.mktemp("secrets")
    ca, rogue = issue("styletx test CA", None), issue("rogue CA", None)
    return PKI(ca, mount(base / "server", issue("localhost", ca, server=True), ca),
               mount(base / "client", issue("client-a", ca, client=True), ca),
               mount(base / "rogue", issue("client-b", rogue, client=True), rogue))


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine(step_seconds=0.001)


def _images() -> tuple[bytes, list[bytes]]:
    from PIL import Image

    return encode(Image.new("RGB", (40, 30), (9, 99, 199)), "PNG"), [encode(Image.new("RGB", (8, 8)), "PNG")]


def stylize(client: Client) -> int:
    content, styles = _images()
    return client.stylize(content, styles, timeout=30, **JOB).width


def code_of(call: Any) -> grpc.StatusCode:
    try:
        call()
    except StyletxError as error:
        return error.code
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# ------------------------------------------------------------------------------------------ TLS, mTLS


def test_tls_from_mounted_files_and_environment(pki: PKI, engine: FakeEngine,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLETX_TLS_CERT", str(pki.server / "tls.crt"))
    monkeypatch.setenv("STYLETX_TLS_KEY", str(pki.server / "tls.key"))
    config = parse_config([])  # what a pod with the secret mounted and these env vars would run
    server = ServerThread(lambda d: engine, tls_cert=config.tls_cert, tls_key=config.tls_key)
    try:
        with Client(server.target, tls=TLSOptions(root_certificates=pki.server / "ca.crt"), retry=None) as c:
            assert stylize(c) == 32 and c.health() == "SERVING"
        with Client(server.target, retry=None) as plain:  # plaintext against a TLS port
            assert code_of(lambda: plain.server_info(timeout=5)) == grpc.StatusCode.UNAVAILABLE
        other_ca = TLSOptions(root_certificates=pki.rogue_client / "ca.crt")
        with Client(server.target, tls=other_ca, retry=None) as wrong:  # a server it cannot verify
            assert code_of(lambda: wrong.server_info(timeout=5)) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki: PKI, engine: FakeEngine) -> None:
    server = ServerThread(lambda d: engine, tls_cert=str(pki.server / "tls.crt"),
                          tls_key=str(pki.server / "tls.key"), tls_client_ca=str(pki.server / "ca.crt"))
    ca = pki.server / "ca.crt"
    try:
        good = TLSOptions(ca, pki.client / "tls.key", pki.client / "tls.crt")
        with Client(server.target, tls=good, retry=None) as client:
            assert stylize(client) == 32
        for tls in (TLSOptions(ca), TLSOptions(ca, pki.rogue_client / "tls.key", pki.rogue_client / "tls.crt")):
            with Client(server.target, tls=tls, retry=None) as refused:
                assert code_of(lambda c=refused: c.server_info(timeout=5)) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_renewed_certificate_files_are_used_without_a_restart(pki: PKI, engine: FakeEngine,
                                                               tmp_path: Path) -> None:
    mounted = mount(tmp_path / "tls", issue("localhost", pki.ca, server=True), pki.ca)
    server = ServerThread(lambda d: engine, tls_cert=str(mounted / "tls.crt"), tls_key=str(mounted / "tls.key"))
    try:
        new_ca = issue("renewed CA", None)
        mount(mounted, issue("localhost", new_ca, server=True), new_ca)  # cert-manager renews the secret
        stamp = time.time_ns() + 10**9  # mtime resolution can be coarse; make sure it changed
        for name in ("tls.crt", "tls.key"):
            os.utime(mounted / name, ns=(stamp, stamp))
        with Client(server.target, tls=TLSOptions(mounted / "ca.crt"), retry=None) as renewed:
            assert renewed.health() == "SERVING"
        old = TLSOptions(root_certificates=pki.ca.cert)
        with Client(server.target, tls=old, retry=None) as stale:
            assert code_of(lambda: stale.health(timeout=5)) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_missing_certificate_file_is_one_clear_error(tmp_path: Path, engine: FakeEngine) -> None:
    with pytest.raises(ConfigError, match=r"cannot read TLS file .*tls\.crt"):
        ServerThread(lambda d: engine, tls_cert=str(tmp_path / "tls.crt"), tls_key=str(tmp_path / "tls.key"))
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    with pytest.raises(ConfigError, match="unusable TLS files"):  # not gRPC's "Failed to bind to address"
        ServerThread(lambda d: engine, tls_cert=str(tmp_path / "tls.crt"), tls_key=str(tmp_path / "tls.key"))


def test_tls_flags_must_come_together() -> None:
    with pytest.raises(ConfigError, match="go together"):
        parse_config(["--tls-cert", "tls.crt"])
    with pytest.raises(ConfigError, match="go together"):
        parse_config(["--tls-client-ca", "ca.crt"])


# ------------------------------------------------------------------------------------------ bearer tokens


@pytest.fixture()
def token_server(engine: FakeEngine, tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token per line\nfile-token-1\n\nfile-token-2\n")
    server = ServerThread(lambda d: engine, auth_token_file=str(tokens), auth_tokens="env-token")
    yield server, tokens
    server.stop()


def test_bearer_tokens_from_file_and_environment(token_server: tuple[ServerThread, Path]) -> None:
    server, _ = token_server
    for token in ("file-token-1", "file-token-2", "env-token"):
        with Client(server.target, token=token, retry=None) as client:
            assert stylize(client) == 32 and client.server_info().limits.max_styles > 0
    refused: list[tuple[str | None, str]] = [(None, "missing bearer token"), ("file-token-3", "invalid bearer token"),
                                             ("FILE-TOKEN-1", "invalid"), ("file-token-1x", "invalid")]
    for bad, words in refused:
        with Client(server.target, token=bad, retry=None) as client:
            with pytest.raises(StyletxError) as info:
                stylize(client)
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and words in info.value.message
            assert code_of(client.server_info) == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open(token_server: tuple[ServerThread, Path]) -> None:
    server, _ = token_server
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert "styletx.v1.StyleTransfer" in names
        stub = pb_grpc.StyleTransferStub(channel)
        assert code_of(lambda: stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)) == \
            grpc.StatusCode.UNAUTHENTICATED
        bad = [("authorization", "Basic ZmlsZS10b2tlbi0xOg==")]  # right secret, wrong scheme
        assert code_of(lambda: stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=bad, timeout=5)) == \
            grpc.StatusCode.UNAUTHENTICATED


def test_rotated_token_file_is_reread(token_server: tuple[ServerThread, Path]) -> None:
    server, tokens = token_server
    tokens.write_text("rotated-token\n")
    stamp = time.time_ns() + 10**9
    os.utime(tokens, ns=(stamp, stamp))
    with Client(server.target, token="rotated-token", retry=None) as client:
        assert client.server_info().limits.max_styles > 0
    with Client(server.target, token="file-token-1", retry=None) as client:
        assert code_of(client.server_info) == grpc.StatusCode.UNAUTHENTICATED


def test_tokens_and_tls_together(pki: PKI, engine: FakeEngine) -> None:
    server = ServerThread(lambda d: engine, tls_cert=str(pki.server / "tls.crt"),
                          tls_key=str(pki.server / "tls.key"), auth_tokens="t1,t2")
    try:
        with Client(server.target, tls=TLSOptions(pki.server / "ca.crt"), token="t2", retry=None) as client:
            assert stylize(client) == 32
    finally:
        server.stop()


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: a match on the first token costs as many comparisons as no match at all."""
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    store = auth.TokenStore(["alpha", "beta", "a-much-longer-gamma-token"])
    assert store.accepts("alpha") and not store.accepts("alph") and not store.accepts("")
    assert len(calls) == 9 and {len(a) for a, _ in calls} == {32}  # digests: equal lengths


def test_empty_token_configuration_is_refused(tmp_path: Path, engine: FakeEngine) -> None:
    (tmp_path / "tokens").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="no token is configured"):
        ServerThread(lambda d: engine, auth_token_file=str(tmp_path / "tokens"))
    with pytest.raises(ConfigError, match="cannot read the token file"):
        ServerThread(lambda d: engine, auth_token_file=str(tmp_path / "missing"))


def test_token_is_hidden_from_help_and_repr(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STYLETX_AUTH_TOKENS", "s3cret-value")
    config = parse_config([])
    assert config.auth_tokens == "s3cret-value" and "s3cret" not in repr(config)
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    assert "s3cret" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------ request limits


@pytest.fixture(scope="module")
def limited(engine: FakeEngine) -> Iterator[ServerThread]:
    server = ServerThread(lambda d: engine, max_pixels=100_000, max_styles=2, max_receive_mb=1, max_size=128)
    yield server
    server.stop()


def _request(content: bytes, styles: int = 1, **params: Any) -> pb.StylizeRequest:
    _, style = _images()
    return pb.StylizeRequest(content=content, styles=[pb.Style(image=style[0])] * styles,
                             params=pb.StylizeParams(**{**JOB, **params}))


def _status(stub: pb_grpc.StyleTransferStub, request: pb.StylizeRequest) -> tuple[grpc.StatusCode, str]:
    try:
        for _ in stub.Stylize(request, timeout=30):
            pass
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def test_per_request_limits_on_pixels_styles_size_and_message(limited: ServerThread) -> None:
    from PIL import Image

    with grpc.insecure_channel(limited.target) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        limits = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5).limits
        assert (limits.max_pixels, limits.max_styles, limits.max_receive_message_bytes, limits.max_size) == \
            (100_000, 2, 1 << 20, 128)
        at_limit = encode(Image.new("RGB", (400, 250)), "PNG")  # exactly 100 000 pixels
        over = encode(Image.new("RGB", (401, 250)), "PNG")
        assert _status(stub, _request(at_limit))[0] == grpc.StatusCode.OK
        code, message = _status(stub, _request(over))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("content:") and "100000" in message
        assert _status(stub, _request(at_limit, styles=2))[0] == grpc.StatusCode.OK
        code, message = _status(stub, _request(at_limit, styles=3))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("styles:")
        code, message = _status(stub, _request(at_limit, size=129))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("params.size:")
        big = _request(at_limit)
        while big.ByteSize() != (1 << 20) + 1:  # one byte over 1 MiB (the length prefix grows as it fills)
            big.styles[0].image += bytes((1 << 20) + 1 - big.ByteSize())
            if big.ByteSize() > (1 << 20) + 1:
                big.styles[0].image = big.styles[0].image[:(1 << 20) + 1 - big.ByteSize()]
        code, message = _status(stub, big)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in message


# ------------------------------------------------------------------------------- streams per connection


@pytest.mark.slow
def test_concurrent_streams_per_connection_are_capped(engine: FakeEngine) -> None:
    """With max_concurrent_streams=2, further calls on the same connection wait for a free stream (they are
    not refused and take no queue slot meanwhile); another connection is not held up; all calls complete."""
    server = ServerThread(lambda d: FakeEngine(step_seconds=0.01), workers=1, queue_size=10,
                          max_concurrent_streams=2)
    content, _ = _images()
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own, not one shared by target
    try:
        with grpc.insecure_channel(server.target, own) as channel, \
                grpc.insecure_channel(server.target, own) as other:
            stub = pb_grpc.StyleTransferStub(channel)
            calls = [stub.Stylize(_request(content, iterations=100), timeout=60) for _ in range(4)]
            accepted = [threading.Event() for _ in calls]
            events: list[list[str]] = [[] for _ in calls]
            readers = [threading.Thread(target=_read_events, args=(call, flag, seen), daemon=True)
                       for call, flag, seen in zip(calls, accepted, events, strict=True)]
            for reader in readers:
                reader.start()
            time.sleep(0.5)
            queue = server.server.service.queue  # type: ignore[union-attr]
            assert sum(f.is_set() for f in accepted) == 2 and queue.running + queue.depth == 2
            second = pb_grpc.StyleTransferStub(other).Stylize(_request(content), timeout=30)
            assert next(second).WhichOneof("event") == "accepted"  # another connection gets a stream at once
            second.cancel()
            for reader, seen in zip(readers, events, strict=True):  # the waiting ones get streams as others finish
                reader.join(timeout=60)
                assert seen and seen[-1] == "completed", seen
            assert all(f.is_set() for f in accepted)
    finally:
        server.stop()


def _read_events(call: Any, flag: threading.Event, seen: list[str]) -> None:
    """Read the whole stream in this one thread (a call is not read from two threads); set ``flag`` at the
    first event (Accepted). An error ends the list with its status code."""
    try:
        for event in call:
            seen.append(event.WhichOneof("event"))
            flag.set()
    except grpc.RpcError as error:
        seen.append(str(error.code()))


def test_max_concurrent_streams_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLETX_MAX_CONCURRENT_STREAMS", "4")
    assert parse_config([]).max_concurrent_streams == 4
    assert parse_config(["--max-concurrent-streams", "8"]).max_concurrent_streams == 8
    with pytest.raises(ConfigError, match="at least 1"):
        parse_config(["--max-concurrent-streams", "0"])


# ----------------------------------------------------------------------------------- code and API audit


def _python_files() -> Iterator[Path]:
    for folder in ("styletx_core", "styletx_cli", "server", "client", "bench", "scripts", "tests"):
        yield from (ROOT / folder).rglob("*.py")


def test_weights_load_only_via_safetensors_or_weights_only() -> None:
    """Every ``torch.load(...)`` passes ``weights_only=True``; no pickle loads in product code."""
    offenders: list[str] = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    offenders.append(f"{where}: torch.load without weights_only=True")
            if owner in ("pickle", "dill", "cloudpickle") and node.func.attr in ("load", "loads") \
                    and path.parts[-2] != "tests":
                offenders.append(f"{where}: {owner}.{node.func.attr}")
    assert not offenders, offenders
    weights = (ROOT / "styletx_core" / "weights.py").read_text()
    assert "safetensors" in weights


_PATHLIKE = {"path", "paths", "file", "files", "filename", "dir", "directory", "folder", "url", "uri", "location"}


def test_no_request_field_names_a_server_side_file() -> None:
    """Walk every message a client can send (each method's input, recursively): no field may be a path."""
    seen: set[str] = set()
    offenders: list[str] = []

    def walk(message: Any) -> None:
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        for field in message.fields:
            if set(field.name.lower().split("_")) & _PATHLIKE:
                offenders.append(f"{message.full_name}.{field.name}")
            if field.message_type is not None:
                walk(field.message_type)

    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            walk(method.input_type)
    assert "styletx.v1.StylizeRequest" in seen and "styletx.v1.StylizeParams" in seen
    assert not offenders, offenders
