"""A WebSocket server for the compression tests: Python `websockets`, which negotiates
permessage-deflate (RFC 7692) whenever the client offers it.

Usage: server.py MODE [ARG]
  echo         echo every message back, same type
  bomb N       on the first connection, send one text message of N bytes of "a" (deflate makes
               it about N/1000 bytes on the wire), then echo
  decline      like echo, but never accept permessage-deflate

Prints one JSON object per line on stdout: {"event": "listening", "port": p} first, then
{"event": "connected", "offered": <Sec-WebSocket-Extensions of the request or null>,
 "negotiated": [...]}, {"event": "frame_in", "rsv1": bool, "wire": n} per data frame received
(its payload on the wire, compressed or not), {"event": "message", "type": "text"|"binary",
"len": n} per message received, {"event": "frame_out", "rsv1": bool, "wire": n} per data frame
sent, and {"event": "closed", "code": c} when a connection ends.
"""

import asyncio
import json
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions import permessage_deflate
from websockets.frames import Opcode


def say(**event):
    print(json.dumps(event), flush=True)


DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class Observed(permessage_deflate.PerMessageDeflate):
    """The negotiated extension, reporting each data frame's size on the wire."""

    def decode(self, frame, *, max_size=None):
        if frame.opcode in DATA:
            say(event="frame_in", rsv1=frame.rsv1, wire=len(frame.data))
        return super().decode(frame, max_size=max_size)

    def encode(self, frame):
        encoded = super().encode(frame)
        if encoded.opcode in DATA:
            say(event="frame_out", rsv1=encoded.rsv1, wire=len(encoded.data))
        return encoded


class ObservedFactory(permessage_deflate.ServerPerMessageDeflateFactory):
    def process_request_params(self, params, accepted_extensions):
        response, extension = super().process_request_params(params, accepted_extensions)
        extension.__class__ = Observed
        return response, extension


CONNECTIONS = 0


async def handler(connection, mode, arg):
    global CONNECTIONS
    CONNECTIONS += 1
    negotiated = [e.name for e in connection.protocol.extensions]
    say(
        event="connected",
        offered=connection.request.headers.get("Sec-WebSocket-Extensions"),
        negotiated=negotiated,
    )
    if not negotiated:
        # Without the extension, frames are reported here (never compressed).
        original = connection.protocol.send_frame

        def send_frame(frame):
            if frame.opcode in DATA:
                say(event="frame_out", rsv1=False, wire=len(frame.data))
            original(frame)

        connection.protocol.send_frame = send_frame
    try:
        if mode == "bomb" and CONNECTIONS == 1:
            await connection.send("a" * arg)
        async for message in connection:
            kind = "text" if isinstance(message, str) else "binary"
            size = len(message.encode()) if kind == "text" else len(message)
            say(event="message", type=kind, len=size)
            await connection.send(message)
    except ConnectionClosed:
        pass  # the client went away (as it does after refusing a bomb)
    finally:
        say(event="closed", code=connection.protocol.close_rcvd.code if connection.protocol.close_rcvd else None)


async def main():
    mode = sys.argv[1]
    arg = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    extensions = [] if mode == "decline" else [ObservedFactory()]
    async with serve(
        lambda c: handler(c, mode, arg),
        "127.0.0.1",
        0,
        extensions=extensions,
        compression=None,
        max_size=16 * 1024 * 1024,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        say(event="listening", port=port)
        await asyncio.Future()


asyncio.run(main())
