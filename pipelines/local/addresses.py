"""Loopback addresses for daemon pods: each run draws its own, never one that a listener already holds.

On a cluster every pod has its own IP, so the daemons of two workflows never share an address. Here a
daemon gets an address of 127.0.0.0/8 (all of it is loopback on Linux): each run starts at a random
address of that range and skips any address on which some process listens (``/proc/net/tcp``, where it
exists). So a daemon left behind by a killed run can neither hold the address of a new run's daemon
("Address already in use") nor answer its readiness probe and clients.
"""

from __future__ import annotations

import ipaddress
import random
import struct
import threading
from pathlib import Path

__all__ = ["AddressPool", "listening_addresses"]

_FIRST = int(ipaddress.IPv4Address("127.1.0.1"))
_LAST = int(ipaddress.IPv4Address("127.254.255.254"))
_PROC_TCP = Path("/proc/net/tcp")
_LISTEN = "0A"


def listening_addresses(table: Path = _PROC_TCP) -> set[str]:
    """The IPv4 addresses some socket listens on (empty when the kernel table is not readable)."""
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return set()
    found: set[str] = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[3] != _LISTEN:
            continue
        raw = fields[1].partition(":")[0]
        try:  # the kernel prints the address as a native-endian 32-bit number
            found.add(str(ipaddress.IPv4Address(struct.pack("=I", int(raw, 16)))))
        except (ValueError, struct.error):
            continue
    return found


class AddressPool:
    """Hands out loopback addresses from a random start, skipping busy ones and ``.0``/``.255``."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._next = (rng or random.SystemRandom()).randint(_FIRST, _LAST)
        self._lock = threading.Lock()

    def allocate(self) -> str:
        busy = listening_addresses()
        with self._lock:
            while True:
                address = ipaddress.IPv4Address(self._next)
                self._next = self._next + 1 if self._next < _LAST else _FIRST
                if address.packed[3] not in (0, 255) and str(address) not in busy:
                    return str(address)
