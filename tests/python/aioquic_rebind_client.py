#!/usr/bin/env python3
"""HTTP/3 client on aioquic that simulates NAT rebinding: each of --connections concurrent
connections sends one GET, then moves to a new UDP socket (a new source port, the same
connection IDs: the client does not know its address changed), then sends --after more GETs.

Prints one line per connection:

    conn N ok SERVER1,SERVER2,... PORT1,PORT2,...      (servers and client ports seen)
    conn N fail REASON

Exit status: 0 when it ran (whatever the outcome of each connection); 2 bad arguments.

    python3 tests/python/aioquic_rebind_client.py --connections 4 198.18.0.102 443
"""

import argparse
import asyncio
import socket
import ssl

from aioquic.asyncio.client import connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration

# The sibling script (same directory, so on sys.path when this one runs).
from aioquic_client import H3Client


class RebindingClient(H3Client):
    """The HTTP/3 client of aioquic_client.py, plus a way to change its source port."""

    async def whoami(self, authority, timeout):
        """GET / and the `key: value` lines of the whoami body."""
        _status, body = await self.get(authority, "/", timeout)
        fields = {}
        for line in body.splitlines():
            k, _, v = line.partition(": ")
            fields[k] = v
        return fields

    async def rebind(self):
        """A new socket, so a new source port: what a NAT rebinding looks like on the wire."""
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0, 0, 0))
        old = self._transport
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=sock)
        return old


async def one(n, args):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.verify_mode = ssl.CERT_NONE
    authority = f"{args.host}:{args.port}"
    servers, ports = [], []
    try:
        async with connect(
            args.host, args.port, configuration=config, create_protocol=RebindingClient
        ) as client:
            r = await client.whoami(authority, args.timeout)
            servers.append(r.get("server", "?"))
            ports.append(r.get("client", "?:?").rsplit(":", 1)[1])
            old = await client.rebind()
            for _ in range(args.after):
                r = await client.whoami(authority, args.timeout)
                servers.append(r.get("server", "?"))
                ports.append(r.get("client", "?:?").rsplit(":", 1)[1])
            client._transport.close()
            client._transport = old
        print(f"conn {n} ok {','.join(servers)} {','.join(ports)}", flush=True)
    except (asyncio.TimeoutError, ConnectionError, OSError) as e:
        print(f"conn {n} fail {type(e).__name__} after {','.join(servers) or '-'}", flush=True)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--after", type=int, default=2, help="GETs after the rebinding")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    args = ap.parse_args()
    async def bounded(n):
        try:
            await asyncio.wait_for(one(n, args), args.timeout * (args.after + 4))
        except asyncio.TimeoutError:
            print(f"conn {n} fail overall-timeout", flush=True)

    await asyncio.gather(*(bounded(n) for n in range(args.connections)))


if __name__ == "__main__":
    asyncio.run(main())
