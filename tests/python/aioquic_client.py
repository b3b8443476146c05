#!/usr/bin/env python3
"""A small HTTP/3 client built on aioquic (PyPI: `pip install aioquic`), an implementation
independent of the quinn/h3 stack `lb-lab backend` uses.

Sends N GET requests on one QUIC connection and prints each response body (for `lb-lab backend`,
its `key: value` whoami lines), separated by a line `--`. With --change-cid the client switches to
a fresh server-issued connection ID (from NEW_CONNECTION_ID) before every request after the
first, so the load balancer sees several CIDs of one connection. The DCID of each request is
printed as `dcid: HEX` after its body.

Exit status: 0 all responses 200; 1 a request failed or timed out; 2 bad arguments.

    python3 tests/python/aioquic_client.py --insecure --requests 2 --change-cid 127.0.0.1 8443 /
"""

import argparse
import asyncio
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.pending = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if not isinstance(ev, (HeadersReceived, DataReceived)):
                continue
            state = self.pending.get(ev.stream_id)
            if state is None:
                continue
            if isinstance(ev, HeadersReceived):
                state["headers"] = dict(ev.headers)
            else:
                state["body"] += ev.data
            if ev.stream_ended and not state["done"].done():
                state["done"].set_result(None)

    def current_dcid(self):
        # The connection ID the client currently addresses the server with (private API,
        # stable across aioquic 1.x).
        return self._quic._peer_cid.cid.hex()

    async def get(self, authority, path, timeout):
        stream_id = self._quic.get_next_available_stream_id()
        done = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = {"headers": {}, "body": b"", "done": done}
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
                (b"user-agent", b"aioquic-lb-test"),
            ],
            end_stream=True,
        )
        self.transmit()
        await asyncio.wait_for(done, timeout)
        state = self.pending.pop(stream_id)
        return int(state["headers"].get(b":status", b"0")), state["body"].decode()


async def run(args):
    config = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name=args.sni
    )
    if args.insecure:
        config.verify_mode = ssl.CERT_NONE
    if args.cafile:
        config.load_verify_locations(args.cafile)
    authority = args.sni if args.port == 443 else f"{args.sni}:{args.port}"
    async with connect(
        args.host,
        args.port,
        configuration=config,
        create_protocol=H3Client,
        wait_connected=True,
    ) as client:
        ok = True
        for i in range(args.requests):
            if i > 0 and args.change_cid:
                client.change_connection_id()
            status, body = await client.get(authority, args.path, args.timeout)
            sys.stdout.write(body)
            if not body.endswith("\n"):
                sys.stdout.write("\n")
            print(f"status: {status}")
            print(f"dcid: {client.current_dcid()}")
            print("--", flush=True)
            ok = ok and status == 200
        client.close()
        await client.wait_closed()
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("path", nargs="?", default="/")
    p.add_argument("--sni", default="localhost", help="TLS server name (default localhost)")
    p.add_argument("--cafile", help="trust this PEM certificate (e.g. lb-lab backend --write-cert)")
    p.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    p.add_argument("--requests", type=int, default=1, help="requests on the connection")
    p.add_argument("--change-cid", action="store_true", help="new CID before each request after the first")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    args = p.parse_args()
    try:
        return asyncio.run(asyncio.wait_for(run(args), args.timeout * (args.requests + 2)))
    except (asyncio.TimeoutError, ConnectionError, OSError) as e:
        print(f"aioquic_client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
