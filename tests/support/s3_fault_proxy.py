"""A TCP proxy on 127.0.0.1 in front of an S3 endpoint (moto's server), whose behaviour a test switches
while it runs: pass through, refuse connections, accept and hang, delay each response, or trickle it.

It works below HTTP, as a broken network or a stalled S3 would: the client under test sees real sockets,
real timeouts and real retries. Every switch of mode cuts the connections already open, so a client's
pooled keep-alive connection cannot slip past a new fault (nor stay hung after one).

Counters, for asserting how much a client tried: ``accepted`` connections, ``requests`` (the request
line of each client burst that starts an HTTP request) and ``client_closes`` (connections the client
closed, e.g. after giving up on a trickle).
"""

from __future__ import annotations

import contextlib
import enum
import select
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

HOST: Final = "127.0.0.1"
_POLL_SECONDS: Final = 0.02
_HTTP_METHODS: Final = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")


class Mode(enum.Enum):
    PASS = "pass through"
    REFUSE = "refuse connections"
    HANG = "accept, read, never answer"
    DELAY = "delay each response"
    TRICKLE = "trickle each response"


@dataclass(frozen=True, slots=True)
class _Behaviour:
    mode: Mode = Mode.PASS
    delay_seconds: float = 0.0
    interval_seconds: float = 0.0
    # In TRICKLE mode, how many bytes of each response pass at full speed before the trickle starts
    # (room for the status line and headers, or for small responses such as listings and manifests).
    head_bytes: int = 0


class _Link:
    """One client connection and, once it sends something worth forwarding, its upstream connection."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.cut = False  # set when the proxy, not the client, ends it

    def shut(self) -> None:
        self.cut = True
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class S3FaultProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        if parts.hostname != HOST or parts.port is None:
            raise ValueError(f"the proxy only fronts a server on {HOST}, got {upstream_url!r}")
        self._upstream = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopped = threading.Event()
        self._behaviour = _Behaviour()
        self._generation = 0
        self._applied = -1
        self._links: set[_Link] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self.accepted = 0
        self.requests: list[str] = []
        self.client_closes = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="s3-fault-proxy", daemon=True)

    # -- control ------------------------------------------------------------------------------------

    def start(self) -> S3FaultProxy:
        self._acceptor.start()
        self._wait_applied(self._generation)
        return self

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.shut()
        self._acceptor.join(timeout=5)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def mode(self) -> Mode:
        return self._behaviour.mode

    def pass_through(self) -> None:
        self._set(_Behaviour(Mode.PASS))

    def refuse(self) -> None:
        """Close the listening socket: connecting is refused at once (ECONNREFUSED)."""
        self._set(_Behaviour(Mode.REFUSE))

    def hang(self) -> None:
        """Accept connections and read requests, but never forward them nor answer."""
        self._set(_Behaviour(Mode.HANG))

    def delay(self, seconds: float) -> None:
        """Hold each response for ``seconds`` before its first byte is passed on."""
        self._set(_Behaviour(Mode.DELAY, delay_seconds=seconds))

    def trickle(self, interval_seconds: float, head_bytes: int = 0) -> None:
        """Pass each response one byte per ``interval_seconds``, after its first ``head_bytes``."""
        self._set(_Behaviour(Mode.TRICKLE, interval_seconds=interval_seconds, head_bytes=head_bytes))

    def wait_for_client_closes(self, count: int, timeout: float) -> bool:
        """True once the client has closed at least ``count`` connections, False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.client_closes < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def request_count(self, containing: str = "") -> int:
        with self._lock:
            return sum(1 for line in self.requests if containing in line)

    def _set(self, behaviour: _Behaviour) -> None:
        with self._lock:
            self._behaviour = behaviour
            self._generation += 1
            generation = self._generation
            links = list(self._links)
        for link in links:
            link.shut()
        self._wait_applied(generation)

    def _wait_applied(self, generation: int) -> None:
        """Until the acceptor has opened or closed the listening socket as the mode asks."""
        deadline = time.monotonic() + 5
        with self._changed:
            while self._applied < generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError("the fault proxy did not apply its new mode within 5 s")
                self._changed.wait(remaining)

    # -- the acceptor -------------------------------------------------------------------------------

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen(64)
        return listener

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                behaviour, generation = self._behaviour, self._generation
            if behaviour.mode is Mode.REFUSE and self._listener is not None:
                self._listener.close()
                self._listener = None
            elif behaviour.mode is not Mode.REFUSE and self._listener is None:
                self._listener = self._listen(self.port)
            with self._changed:
                self._applied = generation
                self._changed.notify_all()
            if self._listener is None:
                self._stopped.wait(_POLL_SECONDS)
                continue
            readable, _, _ = select.select([self._listener], [], [], _POLL_SECONDS)
            if not readable:
                continue
            try:
                client, _address = self._listener.accept()
            except OSError:
                continue
            link = _Link(client)
            thread = threading.Thread(target=self._relay, args=(link,), name="s3-fault-link", daemon=True)
            with self._lock:
                self.accepted += 1
                self._links.add(link)
                self._threads = [alive for alive in self._threads if alive.is_alive()]
                self._threads.append(thread)
            thread.start()

    # -- one connection -----------------------------------------------------------------------------

    def _relay(self, link: _Link) -> None:
        awaiting_response = False  # a request went upstream and its response has not started yet
        head_left = 0
        client_gone = False
        try:
            while not self._stopped.is_set() and not link.cut:
                behaviour = self._behaviour
                if behaviour.mode is Mode.REFUSE:
                    return
                watched = [link.client] if link.upstream is None else [link.client, link.upstream]
                readable, _, _ = select.select(watched, [], [], _POLL_SECONDS)
                if link.client in readable:
                    data = link.client.recv(65536)
                    if not data:
                        client_gone = not link.cut
                        return
                    if data.startswith(_HTTP_METHODS):
                        line = data.split(b"\r\n", 1)[0].decode("latin-1")
                        with self._lock:
                            self.requests.append(line)
                    if behaviour.mode is Mode.HANG:
                        continue
                    if link.upstream is None:
                        link.upstream = socket.create_connection(self._upstream, timeout=5)
                    link.upstream.sendall(data)
                    awaiting_response = True
                    head_left = behaviour.head_bytes
                if link.upstream is not None and link.upstream in readable:
                    data = link.upstream.recv(65536)
                    if not data:
                        return
                    delayed = behaviour.mode is Mode.DELAY and awaiting_response
                    if delayed and (self._stopped.wait(behaviour.delay_seconds) or link.cut):
                        return
                    awaiting_response = False
                    if behaviour.mode is Mode.TRICKLE:
                        head, data = data[:head_left], data[head_left:]
                        head_left -= len(head)
                        client_gone = not self._send(link, head)
                        for index in range(len(data)):
                            if client_gone or self._stopped.wait(behaviour.interval_seconds) or link.cut:
                                return
                            client_gone = not self._send(link, data[index : index + 1])
                        if client_gone:
                            return
                    elif not self._send(link, data):
                        client_gone = True
                        return
        except OSError:
            pass
        finally:
            for sock in (link.client, link.upstream):
                if sock is not None:
                    sock.close()
            with self._changed:
                self._links.discard(link)
                if client_gone and not link.cut:
                    self.client_closes += 1
                self._changed.notify_all()

    @staticmethod
    def _send(link: _Link, data: bytes) -> bool:
        """False if the client has gone (closed or reset its end)."""
        if not data:
            return True
        try:
            link.client.sendall(data)
        except OSError:
            return link.cut  # a cut by the proxy is not the client leaving
        return True
