#!/usr/bin/env python3
"""A legacy HTTP/3 server on aioquic (PyPI: `pip install aioquic`) for the learned-CID tests:
it issues aioquic's default random 8-octet connection IDs, knows nothing of QUIC-LB, and
answers every GET with its name and the client address it currently sees:

    server: NAME
    client: ADDR:PORT

A self-signed certificate is generated at start-up (clients use --insecure). Prints
`ready` on stdout once it listens.

    python3 tests/python/aioquic_server.py --name b1 198.19.1.10 4433
"""

import argparse
import asyncio
import datetime
import os
import sys
import tempfile

from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAME = "server"


def self_signed(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lb-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


class H3Server(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = None

    def quic_event_received(self, event):
        if self.h3 is None:
            self.h3 = H3Connection(self._quic)
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                headers = dict(ev.headers)
                if headers.get(b":method") != b"GET":
                    continue
                # The path the server currently sends on: the client's address as it sees it.
                addr = self._quic._network_paths[0].addr
                host, port = addr[0], addr[1]
                if host.startswith("::ffff:"):
                    host = host[len("::ffff:"):]
                body = f"server: {NAME}\nclient: {host}:{port}\n".encode()
                self.h3.send_headers(
                    ev.stream_id,
                    [
                        (b":status", b"200"),
                        (b"content-type", b"text/plain"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                )
                self.h3.send_data(ev.stream_id, body, end_stream=True)
                self.transmit()


async def main():
    global NAME
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    args = ap.parse_args()
    NAME = args.name
    directory = tempfile.mkdtemp(prefix="aioquic-server-")
    cert, key = self_signed(directory)
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(cert, key)
    await serve(args.host, args.port, configuration=config, create_protocol=H3Server)
    print("ready", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
