"""A cheap load generator: keep-alive HTTP/1.1 on asyncio streams, run in worker processes.

httpx spends about 0.5 ms of CPU per request; on a 2-core machine shared with the server and
PostgreSQL that caps what can be measured. Here a request is pre-encoded bytes (only its
idempotency keys are filled in at each send) and a response is read as the status line, the
headers and a Content-Length (or chunked) body. One connection is one client: it sends one
request at a time and waits for the answer.

A Driver (this HTTP client, or the raw-asyncpg baseline) runs in a process of its own
(multiprocessing, spawn), so its CPU shows apart from the coordinator's. Every process
connects first, reports ready, and all start at the same instant (time.monotonic() is
machine-wide on Linux). Only answers received inside the measured window count for the rate
and the latencies; every success counts for the consistency checks.

This module imports nothing heavy: a spawned worker starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

KEY_PLACEHOLDER = "@@KEY@@"
KEY_TAG_LENGTH = 8
# tag "-" connection "-" counter: fixed width, so Content-Length is known in advance
KEY_LENGTH = KEY_TAG_LENGTH + 1 + 5 + 1 + 10
READY_TIMEOUT_S = 60.0
ERROR_MARKER = b'"errors"'


@dataclass(frozen=True)
class Window:
    """Instants on time.monotonic(): start, end of the warm-up, end of the measured window."""

    start: float
    measured_from: float
    end: float


@dataclass
class PartResult:
    """What one process saw."""

    latencies: list[float]  # seconds, of successes answered inside the measured window
    successes: dict[int, int]  # label -> successes, warm-up and the last in-flight included
    errors: int
    transport_errors: int  # no answer at all: the outcome is unknown
    first_error: str | None


class Tally:
    def __init__(self, window: Window) -> None:
        self._window = window
        self.latencies: list[float] = []
        self.successes: Counter[int] = Counter()
        self.errors = 0
        self.transport_errors = 0
        self.first_error: str | None = None

    def success(self, label: int, sent: float, done: float) -> None:
        self.successes[label] += 1
        if self._window.measured_from <= done < self._window.end:
            self.latencies.append(done - sent)

    def error(self, message: str, *, transport: bool = False) -> None:
        self.errors += 1
        self.transport_errors += transport
        if self.first_error is None:
            self.first_error = message

    def result(self) -> PartResult:
        return PartResult(
            self.latencies,
            dict(self.successes),
            self.errors,
            self.transport_errors,
            self.first_error,
        )


class Driver(Protocol):
    async def prepare(self) -> None: ...

    async def run(self, window: Window) -> PartResult: ...

    async def close(self) -> None: ...


def per_connection(targets: Sequence[T], connections: int) -> list[list[T]]:
    """What each connection cycles through: the targets dealt out round-robin (with fewer
    targets than connections, they share them)."""
    if len(targets) >= connections:
        return [list(targets[c::connections]) for c in range(connections)]
    return [[targets[c % len(targets)]] for c in range(connections)]


def split(items: Sequence[T], parts: int) -> list[tuple[int, list[T]]]:
    """`items` in `parts` contiguous slices, with the index of each slice's first item."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    slices, first = [], 0
    for n in range(parts):
        count = size + (n < extra)
        slices.append((first, list(items[first : first + count])))
        first += count
    return slices


# --- HTTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One pre-encoded POST. Its body is `parts` with an idempotency key between each two."""

    parts: tuple[bytes, ...]  # parts[0] starts with the request line and headers
    expect: tuple[bytes, ...]  # each must appear in the body of the 200 answer
    label: int  # what a success is counted under (a company's index)

    @classmethod
    def post(
        cls,
        path: str,
        headers: dict[str, str],
        body: str,
        expect: Sequence[bytes],
        label: int,
    ) -> Request:
        """`body` may hold KEY_PLACEHOLDER anywhere; each is replaced by a fresh key."""
        parts = body.encode().split(KEY_PLACEHOLDER.encode())
        length = sum(map(len, parts)) + KEY_LENGTH * (len(parts) - 1)
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {length}\r\n\r\n"
        return cls((head.encode() + parts[0], *parts[1:]), tuple(expect), label)


class ResponseError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the connection stays open."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 ") and not head.startswith(b"HTTP/1.0 "):
        raise ResponseError(f"not an HTTP response: {head[:80]!r}")
    status = int(head[9:12])
    length: int | None = None
    chunked = close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    if chunked:
        body = await _read_chunked(reader)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body, close = await reader.read(), True
    return status, body, not close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are expected
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


@dataclass
class HttpDriver:
    """Keep-alive connections, each cycling through its own list of requests."""

    host: str
    port: int
    requests: list[list[Request]]  # per connection
    key_tag: str  # KEY_TAG_LENGTH characters, unique to the run
    first_connection: int = 0  # this process's first connection, over all processes
    timeout_s: float = 30.0
    _streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(
        default_factory=list, repr=False
    )

    def __post_init__(self) -> None:
        if len(self.key_tag) != KEY_TAG_LENGTH:
            raise ValueError(f"key_tag must be {KEY_TAG_LENGTH} characters long")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # Batch bodies are large: a bigger read buffer saves wake-ups.
        return await asyncio.open_connection(self.host, self.port, limit=2**20)

    async def prepare(self) -> None:
        self._streams = list(await asyncio.gather(*(self._connect() for _ in self.requests)))

    async def close(self) -> None:
        for _, writer in self._streams:
            writer.close()

    async def run(self, window: Window) -> PartResult:
        tally = Tally(window)
        await asyncio.sleep(max(0.0, window.start - time.monotonic()))
        await asyncio.gather(*(self._client(i, window, tally) for i in range(len(self.requests))))
        return tally.result()

    async def _client(self, index: int, window: Window, tally: Tally) -> None:
        reader, writer = self._streams[index]
        prefix = f"{self.key_tag}-{self.first_connection + index:05d}-".encode()
        counter = 0
        requests = self.requests[index]
        position = 0
        while time.monotonic() < window.end:
            request = requests[position]
            position = (position + 1) % len(requests)
            parts = request.parts
            if len(parts) == 1:
                data = parts[0]
            else:
                pieces = [parts[0]]
                for part in parts[1:]:
                    counter += 1
                    pieces += (prefix, b"%010d" % counter, part)
                data = b"".join(pieces)
            sent = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout_s):
                    writer.write(data)
                    if len(data) > 65536:
                        await writer.drain()
                    status, body, keep_alive = await read_response(reader)
            except (OSError, EOFError, TimeoutError, ResponseError, ValueError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}", transport=True)
                writer.close()
                reader, writer = await self._reconnect(window)
                self._streams[index] = (reader, writer)
                continue
            done = time.monotonic()
            if (
                status == 200
                and all(e in body for e in request.expect)
                and ERROR_MARKER not in body
            ):
                tally.success(request.label, sent, done)
            else:
                tally.error(f"HTTP {status}: {body[:1000].decode(errors='replace')}")
            if not keep_alive:
                writer.close()
                reader, writer = await self._reconnect(window)
                self._streams[index] = (reader, writer)

    async def _reconnect(self, window: Window) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            try:
                return await self._connect()
            except OSError:
                if time.monotonic() >= window.end:
                    raise
                await asyncio.sleep(0.1)


def http_drivers(
    host: str,
    port: int,
    requests: Sequence[Request],
    connections: int,
    processes: int,
    key_tag: str,
    timeout_s: float = 30.0,
) -> list[HttpDriver]:
    """`connections` clients over `processes` processes, the requests dealt out to them."""
    clients = per_connection(requests, connections)
    return [
        HttpDriver(host, port, chunk, key_tag, first, timeout_s)
        for first, chunk in split(clients, processes)
    ]


# --- processes -------------------------------------------------------------------------------


def _child(pipe: Connection) -> None:
    # Ctrl-C reaches the whole process group: the coordinator stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        driver: Driver = pipe.recv()
        asyncio.run(_child_main(driver, pipe))
    except Exception:
        pipe.send(("error", traceback.format_exc()))


async def _child_main(driver: Driver, pipe: Connection) -> None:
    try:
        await driver.prepare()
        pipe.send(("ready", None))
        window: Window = pipe.recv()  # blocking: nothing else runs in this process meanwhile
        pipe.send(("done", await driver.run(window)))
        # Connections stay open until the coordinator has read the CPU counters: a database
        # backend that exits before the window's last reading would take its CPU time along.
        with contextlib.suppress(EOFError, OSError):
            pipe.recv()
    finally:
        await driver.close()


async def _receive(pipes: list[Connection], expected: str, within_s: float) -> list[Any]:
    """One message from every pipe, polled so that the event loop (CPU probe) keeps running."""
    deadline = time.monotonic() + within_s
    answers: list[Any] = [None] * len(pipes)
    waiting = set(range(len(pipes)))
    while waiting:
        for n in list(waiting):
            if pipes[n].poll():
                kind, payload = pipes[n].recv()
                if kind != expected:
                    raise RuntimeError(f"load process {n} failed:\n{payload}")
                answers[n] = payload
                waiting.discard(n)
        if waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"load processes {sorted(waiting)} did not answer {expected}")
            await asyncio.sleep(0.02)
    return answers


@dataclass
class Running:
    """Load processes started and connected, waiting for the signal to go."""

    processes: list[multiprocessing.process.BaseProcess]
    pipes: list[Connection]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def go(self, warmup_s: float, seconds: float) -> Window:
        start = time.monotonic() + 0.05
        window = Window(start, start + warmup_s, start + warmup_s + seconds)
        for pipe in self.pipes:
            pipe.send(window)
        return window

    async def results(self, window: Window, timeout_s: float) -> list[PartResult]:
        wait = window.end - time.monotonic() + timeout_s
        parts: list[PartResult] = await _receive(self.pipes, "done", wait)
        return parts


class LoadProcesses:
    """`async with LoadProcesses(drivers) as running:` starts one process per driver and waits
    until every one is connected; at the end every process is stopped, whatever happened."""

    def __init__(self, drivers: Sequence[Driver]) -> None:
        self._drivers = drivers
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._pipes: list[Connection] = []

    async def __aenter__(self) -> Running:
        context = multiprocessing.get_context("spawn")
        for driver in self._drivers:
            parent, child = context.Pipe()
            process = context.Process(target=_child, args=(child,), daemon=True)
            process.start()
            child.close()
            self._processes.append(process)
            self._pipes.append(parent)
            parent.send(driver)
        await _receive(self._pipes, "ready", READY_TIMEOUT_S)
        return Running(self._processes, self._pipes)

    async def __aexit__(self, *exc: object) -> None:
        for pipe in self._pipes:  # "close your connections and exit"
            with contextlib.suppress(OSError):
                pipe.send("close")
        deadline = time.monotonic() + 5
        for process in self._processes:
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        for pipe in self._pipes:
            pipe.close()


@dataclass
class LoadOutcome:
    seconds: float
    latencies: list[float]  # sorted
    successes: Counter[int]
    errors: int
    transport_errors: int
    first_error: str | None
    cpu_cores: dict[str, float]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


def merge(parts: Sequence[PartResult], seconds: float, cpu_cores: dict[str, float]) -> LoadOutcome:
    successes: Counter[int] = Counter()
    for part in parts:
        successes.update(part.successes)
    return LoadOutcome(
        seconds=seconds,
        latencies=sorted(x for part in parts for x in part.latencies),
        successes=successes,
        errors=sum(p.errors for p in parts),
        transport_errors=sum(p.transport_errors for p in parts),
        first_error=next((p.first_error for p in parts if p.first_error), None),
        cpu_cores=cpu_cores,
    )
