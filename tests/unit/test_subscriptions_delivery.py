"""One delivery's HTTP exchange (workers.notifying.post) against a real server on loopback.

Aspects: the connection goes to the checked address, never to what the name would resolve
to now (a name that "rebinds" is not looked up again), with ``Host`` as the URL names it and
the body and headers as given; a redirect is not followed (the 3xx is the answer); a huge
answer is not read beyond the cap; a server that never answers, or trickles bytes for ever,
ends in an error instead of holding the worker; over HTTPS to a pinned address the
certificate is checked against the URL's host (SNI), so an untrusted certificate or one for
another name is refused.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mobility import subscriptions as subs
from workers.notifying import post


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        self.write_error: BaseException | None = None
        self.done = threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers),
                                     "body": body})
        mode = self.server.mode
        try:
            if mode == "redirect":
                self.send_response(302)
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif mode == "huge":
                size = 64 << 20
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                chunk = b"x" * (1 << 16)
                for _ in range(size // len(chunk)):
                    self.wfile.write(chunk)
            else:
                self.send_response(204)
                self.end_headers()
        except OSError as exc:
            self.server.write_error = exc
        finally:
            self.server.done.set()

    def do_GET(self) -> None:
        self.server.requests.append({"path": self.path, "headers": dict(self.headers),
                                     "body": b""})
        self.send_response(200)
        self.end_headers()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    srv = Recorder(getattr(request, "param", "ok"))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def target(host: str, port: int, *, path: str = "/hook?x=1") -> subs.Target:
    endpoint = subs.Endpoint(scheme="http", host=host, port=port, explicit_port=True,
                             target=path)
    return subs.Target(endpoint=endpoint, addresses=("127.0.0.1",))


def test_delivers_to_the_pinned_address_with_the_urls_host(server: Recorder) -> None:
    port = server.server_address[1]
    status = post(target("rebind.invalid", port), b'{"a":1}',
                  {"X-Mobility-Signature": "sha256=ab", "Content-Type": "application/json"},
                  timeout=5)
    assert status == 204
    [got] = server.requests
    assert got["path"] == "/hook?x=1" and got["body"] == b'{"a":1}'
    assert got["headers"]["Host"] == f"rebind.invalid:{port}"  # no lookup of that name
    assert got["headers"]["X-Mobility-Signature"] == "sha256=ab"


@pytest.mark.parametrize("server", ["redirect"], indirect=True)
def test_a_redirect_is_not_followed(server: Recorder) -> None:
    assert post(target("127.0.0.1", server.server_address[1]), b"{}", {}, timeout=5) == 302
    assert [r["path"] for r in server.requests] == ["/hook?x=1"]


@pytest.mark.parametrize("server", ["huge"], indirect=True)
def test_a_huge_answer_is_not_read(server: Recorder) -> None:
    assert post(target("127.0.0.1", server.server_address[1]), b"{}", {}, timeout=5) == 200
    assert server.done.wait(30)
    assert isinstance(server.write_error, OSError)  # the worker hung up long before the end


def silent_server(*, trickle: bool) -> tuple[socket.socket, threading.Event]:
    """A server that accepts and then says nothing (or one header byte now and then)."""
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        conn, _ = sock.accept()
        with conn:
            if trickle:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.05):
                if trickle:
                    try:
                        conn.sendall(b"X")
                    except OSError:
                        return

    threading.Thread(target=run, daemon=True).start()
    return sock, stop


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_a_server_that_never_finishes_answering_ends_in_an_error(trickle: bool) -> None:
    sock, stop = silent_server(trickle=trickle)
    try:
        with pytest.raises(OSError):
            post(target("127.0.0.1", sock.getsockname()[1]), b"{}", {}, timeout=0.3)
    finally:
        stop.set()
        sock.close()


def self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` (and its key), signed by itself, in ``tmp``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Recorder, Path]]:
    cert, key = self_signed(tmp_path, "hooks.test")
    srv = Recorder("ok")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, cert
    srv.shutdown()
    srv.server_close()


def tls_target(host: str, port: int) -> subs.Target:
    endpoint = subs.Endpoint(scheme="https", host=host, port=port, explicit_port=True,
                             target="/hook")
    return subs.Target(endpoint=endpoint, addresses=("127.0.0.1",))


def test_https_checks_the_certificate_against_the_urls_host(
        tls_server: tuple[Recorder, Path]) -> None:
    srv, cert = tls_server
    port = srv.server_address[1]
    trusting = ssl.create_default_context(cafile=str(cert))
    assert post(tls_target("hooks.test", port), b"{}", {}, timeout=5, tls=trusting) == 204
    assert srv.requests[0]["headers"]["Host"] == f"hooks.test:{port}"
    with pytest.raises(ssl.SSLCertVerificationError):  # another name than the certificate's
        post(tls_target("other.test", port), b"{}", {}, timeout=5, tls=trusting)
    with pytest.raises(ssl.SSLCertVerificationError):  # the system's trust store: untrusted
        post(tls_target("hooks.test", port), b"{}", {}, timeout=5)
    assert len(srv.requests) == 1
