"""This process's memory, as the kernel reports it (Linux; None elsewhere), and sizes for messages."""

from __future__ import annotations

import os
from typing import Final

_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """Resident memory now: /proc/self/statm, the cheapest read there is."""
    try:
        with open("/proc/self/statm", "rb") as statm:  # noqa: PTH123
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def status_bytes(field: str) -> int | None:
    """A size from /proc/self/status: ``VmHWM`` (peak resident), ``VmSize`` (mapped), ..."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:  # noqa: PTH123
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def mebibytes(size: int) -> int:
    """``size`` in MiB, rounded up: a limit is never shown smaller than it is."""
    return -(-size // (1024 * 1024))
