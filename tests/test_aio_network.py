"""The providers' asyncio network backend over real sockets: TLS with certificate checks,
keep-alive reuse, and a server that closes an idle connection."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.providers import aio_network


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.peers.append(self.client_address[1])
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if self.path == "/close":
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}", cert_file
    server.shutdown()


async def test_tls_keep_alive_and_a_closed_idle_connection(tls_server: tuple[str, Path]) -> None:
    url, cert = tls_server
    _Handler.peers.clear()
    trusted = ssl.create_default_context(cafile=str(cert))
    async with httpx2.AsyncClient(transport=aio_network.transport(verify=trusted)) as client:
        replies = [await client.post(f"{url}/keep", json={"n": i}) for i in range(3)]
        closing = await client.post(f"{url}/close", json={})
        after = await client.post(f"{url}/keep", json={})  # a new connection, transparently
    assert all(r.status_code == 200 and r.json() == {"ok": True} for r in [*replies, closing, after])
    assert len(set(_Handler.peers[:4])) == 1  # one kept-alive connection for the first four
    assert _Handler.peers[4] != _Handler.peers[3]


async def test_an_untrusted_certificate_is_refused(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    async with httpx2.AsyncClient(transport=aio_network.transport()) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.post(f"{url}/keep", json={})
