"""A rank 0 that does not play by the protocol: what a hostile or broken trainer image could serve.

The "image" of the test kubelet is this machine; a pod whose image is `HOSTILE_IMAGE` (tests/e2e/images.py)
finds this folder first on its PATH, so the operator's `torchrun ...` command starts this program, which
poses as rank 0 on the `--metrics-port` it is given. Answers cycle per request, on every path: an endless
body as fast as the socket takes it, junk (HTTP 200 that is not JSON), and a connection accepted and
never answered. It runs until it is killed, as a trainer would. Standard library only: it runs as a plain
script (also from tests/integration/operator/test_hostile_rank_zero.py, in a process of its own).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys

CHUNK = b'{"x": "' + b"x" * (1024 * 1024)
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
MODES = ("endless", "junk", "hold")


def port_of(argv: list[str]) -> int:
    """The value after `--metrics-port` (or in `--metrics-port=N`)."""
    for index, part in enumerate(argv):
        if part == "--metrics-port":
            return int(argv[index + 1])
        if part.startswith("--metrics-port="):
            return int(part.split("=", 1)[1])
    raise SystemExit("hostile rank 0: no --metrics-port in the command line")


async def answer(mode: str, writer: asyncio.StreamWriter) -> None:
    if mode == "endless":
        writer.write(HEADERS + b"\r\n")
        while True:
            writer.write(CHUNK)
            await writer.drain()
    elif mode == "junk":
        body = b"\x00 this is not json {"
        writer.write(HEADERS + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
    else:
        await asyncio.sleep(3600)  # accepted; never answered


async def serve(port: int, modes: itertools.cycle[str]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # the request line and headers: whatever was asked, the answer is the same
            await answer(next(modes), writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port)
    print(f"hostile rank 0 serving on port {port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    if os.environ.get("KUBETUNE_WORKER_INDEX", "0") != "0":  # only rank 0 serves (as the trainer); the rest wait
        signal.pause()
    asyncio.run(serve(port_of(argv), itertools.cycle(MODES)))


if __name__ == "__main__":
    main(sys.argv[1:])
