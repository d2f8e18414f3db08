"""Raw HTTP/1.1 over sockets to 127.0.0.1: bytes exactly as given, for requests no client library sends."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import time
from typing import Final

_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) [^\r\n]*\r\n")
_CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length: *([0-9]+)", re.IGNORECASE)


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def raw_exchange(address: tuple[str, int], request: bytes, read_timeout: float = 5.0) -> bytes:
    """Send bytes exactly as given and read until the server closes or goes quiet for ``read_timeout``."""
    with socket.create_connection(address, timeout=read_timeout) as connection:
        # The server may answer and close before taking everything: then read what it said.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(request)
        return read_until_closed(connection)


def read_until_closed(connection: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def statuses(reply: bytes) -> list[int]:
    """The status of every response in ``reply``, one after another as framed by their Content-Length
    (responses to pipelined or smuggled requests included; bytes that are no response end the list)."""
    found: list[int] = []
    position = 0
    while (status := _STATUS_LINE.match(reply, position)) is not None:
        end = reply.find(b"\r\n\r\n", status.start())
        if end < 0:
            break
        length = _CONTENT_LENGTH.search(reply, status.end() - 2, end)
        found.append(int(status.group(1)))
        position = end + 4 + (int(length.group(1)) if length else 0)
    return found


def reset(connection: socket.socket) -> None:
    """Close with a TCP reset (RST) instead of an orderly FIN."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def trickle(
    address: tuple[str, int], start: bytes, byte: bytes, every: float, give_up_after: float
) -> tuple[bytes, float]:
    """Send ``start``, then ``byte`` every ``every`` seconds until the server answers or closes.

    Returns what the server sent and how many seconds that took; gives up (returning b"") after
    ``give_up_after`` seconds, which is an upper bound for the caller, never a measurement.
    """
    started = time.monotonic()
    with socket.create_connection(address, timeout=10) as connection:
        connection.sendall(start)
        while time.monotonic() - started < give_up_after:
            readable, _, _ = select.select([connection], [], [], every)
            if readable:
                connection.settimeout(5)
                return read_until_closed(connection), time.monotonic() - started
            try:
                connection.sendall(byte)
            except (BrokenPipeError, ConnectionResetError):
                connection.settimeout(5)
                return read_until_closed(connection), time.monotonic() - started
    return b"", time.monotonic() - started
