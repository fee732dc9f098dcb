"""A WebSocket client for the listener tests: Python `websockets`, which offers permessage-deflate
and compresses what it sends when the server accepts.

Usage: client.py URL

Reads commands from stdin, one JSON object per line:
  {"send": "<text>"}           send a text message
  {"send_binary": "<hex>"}     send a binary message
  {"send_repeat": N}           send one text message of N bytes of "a" (a compression bomb: about
                               N/1000 bytes on the wire)
  {"close": true}              close the connection (code 1000)

Prints one JSON object per line on stdout: {"event": "connected", "extensions": [...]} first,
then {"event": "text", "data": "..."} or {"event": "binary", "hex": "..."} per message received,
and {"event": "closed", "code": c} when the connection ends (then it exits).
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def say(**event):
    print(json.dumps(event), flush=True)


async def commands(ws):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        command = json.loads(line)
        try:
            if "send" in command:
                await ws.send(command["send"])
            elif "send_binary" in command:
                await ws.send(bytes.fromhex(command["send_binary"]))
            elif "send_repeat" in command:
                await ws.send("a" * command["send_repeat"])
            elif "close" in command:
                await ws.close()
                return
        except ConnectionClosed:
            return


async def main(url):
    async with connect(url, max_size=None, open_timeout=10) as ws:
        say(event="connected", extensions=[e.name for e in ws.protocol.extensions])
        sending = asyncio.create_task(commands(ws))
        try:
            async for message in ws:
                if isinstance(message, str):
                    say(event="text", data=message)
                else:
                    say(event="binary", hex=message.hex())
        except ConnectionClosed:
            pass
        sending.cancel()
        code = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None
        say(event="closed", code=code)


asyncio.run(main(sys.argv[1]))
