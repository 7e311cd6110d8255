"""An HTTP/1.1 keep-alive load generator on raw asyncio (uvloop when installed), run in its own process.

Two modes:

- ``open_loop``: requests are *scheduled* at a fixed rate whatever the server does, and
  each latency is measured from the scheduled time (so a stalled server is charged for the
  requests that queued behind it: no coordinated omission);
- ``closed_loop``: ``connections`` clients each send the next request as soon as the last
  answer arrived; the completion rate is the server's maximum throughput.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence


class _Conn:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str) -> int:
        """Send one GET, read the whole answer; returns the status code."""
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _open_loop(host, port, paths, rate, duration_s, connections) -> dict:
    conns = [_Conn(host, port) for _ in range(connections)]
    await asyncio.gather(*(c.open() for c in conns))
    free: asyncio.Queue[_Conn] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    latencies: list[float] = []
    errors = 0
    tasks = set()

    async def one(scheduled: float, path: str) -> None:
        nonlocal errors
        conn = await free.get()
        try:
            status = await conn.get(path)
            if status != 200:
                errors += 1
            latencies.append(time.perf_counter() - scheduled)
        finally:
            free.put_nowait(conn)

    n = int(rate * duration_s)
    start = time.perf_counter() + 0.05
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(scheduled, paths[i % len(paths)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return {"latencies_s": latencies, "errors": errors, "achieved_rps": len(latencies) / elapsed}


async def _closed_loop(host, port, paths, duration_s, connections) -> dict:
    conns = [_Conn(host, port) for _ in range(connections)]
    await asyncio.gather(*(c.open() for c in conns))
    done = errors = 0
    stop_at = time.perf_counter() + duration_s

    async def client(conn: _Conn, offset: int) -> None:
        nonlocal done, errors
        i = offset
        while time.perf_counter() < stop_at:
            if await conn.get(paths[i % len(paths)]) != 200:
                errors += 1
            done += 1
            i += 7
    started = time.perf_counter()
    await asyncio.gather(*(client(c, k * 1000) for k, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return {"rps": done / elapsed, "requests": done, "errors": errors}


def _run(coro_fn: Callable, *args) -> dict:
    try:
        import uvloop

        return uvloop.run(coro_fn(*args))
    except ImportError:
        return asyncio.run(coro_fn(*args))


def open_loop(host: str, port: int, paths: Sequence[str], rate: float, duration_s: float,
              connections: int = 64) -> dict:
    return _run(_open_loop, host, port, list(paths), rate, duration_s, connections)


def closed_loop(host: str, port: int, paths: Sequence[str], duration_s: float, connections: int = 32) -> dict:
    return _run(_closed_loop, host, port, list(paths), duration_s, connections)


def shuffled_paths(template: str, ids: Sequence[str], n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [template.format(id=rng.choice(ids)) for _ in range(n)]
