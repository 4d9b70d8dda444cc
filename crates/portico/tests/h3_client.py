"""An HTTP/3 client for Portico's tests, made with aioquic (nobody here wrote it).

    h3_client.py PORT NAME [--cafile PEM] [--path P] [--method M] [--data TEXT]
                 [--header "Name: value"] [--repeat N] [--parallel N] [--resume]

Connects over QUIC to 127.0.0.1:PORT with SNI and :authority NAME (checking the server's
certificate against PEM when given), sends the request REPEAT times one after the other
(and PARALLEL at once) on one connection, and prints one JSON line per answer:
{"status", "headers", "body"}. With --resume, it then connects again with the session
ticket it got and sends the same request at once, in 0-RTT if the server allows it; that
answer's line also has "resumed" and "early_data" (whether the server took the 0-RTT data).
Exits 2 when the connection cannot be made.
"""

import argparse
import asyncio
import json
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.pending = {}
        self.answers = {}

    def quic_event_received(self, event):
        for e in self.h3.handle_event(event):
            if isinstance(e, (HeadersReceived, DataReceived)):
                answer = self.answers.setdefault(e.stream_id, {"headers": [], "body": b""})
                if isinstance(e, HeadersReceived):
                    answer["headers"] += e.headers
                else:
                    answer["body"] += e.data
                if e.stream_ended and e.stream_id in self.pending:
                    self.pending.pop(e.stream_id).set_result(self.answers.pop(e.stream_id))

    async def request(self, method, authority, path, headers, body):
        stream = self._quic.get_next_available_stream_id()
        head = [(b":method", method.encode()), (b":scheme", b"https"),
                (b":authority", authority.encode()), (b":path", path.encode())]
        head += [(k.lower().encode(), v.encode()) for k, v in headers]
        if body is not None:
            head.append((b"content-length", str(len(body)).encode()))
        self.h3.send_headers(stream, head, end_stream=body is None)
        if body is not None:
            self.h3.send_data(stream, body, end_stream=True)
        done = asyncio.get_running_loop().create_future()
        self.pending[stream] = done
        self.transmit()
        answer = await asyncio.wait_for(done, 10)
        fields = {}
        for k, v in answer["headers"]:
            fields.setdefault(k.decode(), []).append(v.decode())
        status = int(fields.pop(":status")[0])
        return {"status": status, "headers": fields, "body": answer["body"].decode("utf-8", "replace")}


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("name")
    p.add_argument("--cafile")
    p.add_argument("--path", default="/")
    p.add_argument("--method", default="GET")
    p.add_argument("--data")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    # Gives up on a silent server in seconds, not aioquic's default minute.
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=a.name, idle_timeout=5.0)
    if a.cafile:
        config.load_verify_locations(a.cafile)
    else:
        config.verify_mode = ssl.CERT_NONE
    headers = [tuple(part.strip() for part in h.split(":", 1)) for h in a.header]
    body = a.data.encode() if a.data is not None else None
    tickets = []
    try:
        async with connect("127.0.0.1", a.port, configuration=config, create_protocol=Client,
                           session_ticket_handler=tickets.append, wait_connected=True) as client:
            for _ in range(a.repeat):
                answers = await asyncio.gather(*[client.request(a.method, a.name, a.path, headers, body)
                                                 for _ in range(a.parallel)])
                for answer in answers:
                    print(json.dumps(answer), flush=True)
        if a.resume:
            if not tickets:
                print("no session ticket to resume with", file=sys.stderr)
                sys.exit(3)
            config.session_ticket = tickets[-1]
            async with connect("127.0.0.1", a.port, configuration=config, create_protocol=Client,
                               wait_connected=False) as client:
                answer = await client.request(a.method, a.name, a.path, headers, body)
                answer["resumed"] = client._quic.tls.session_resumed
                answer["early_data"] = client._quic.tls.early_data_accepted
                print(json.dumps(answer), flush=True)
    except (ConnectionError, asyncio.TimeoutError, OSError) as e:
        print(f"no HTTP/3 connection: {e!r}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    asyncio.run(main())
