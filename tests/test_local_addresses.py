"""Daemon addresses of the local executor: each run draws its own, skipping addresses a process listens on."""

from __future__ import annotations

import ipaddress
import random
import socket
from pathlib import Path

import pytest

from argofl.pipelines.local.addresses import AddressPool, listening_addresses


def test_a_listening_socket_is_read_from_the_kernel_table():
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this system")
    with socket.socket() as sock:
        sock.bind(("127.3.4.5", 0))
        assert "127.3.4.5" not in listening_addresses()  # bound, not listening
        sock.listen()
        assert "127.3.4.5" in listening_addresses()


def test_a_pool_skips_the_address_a_left_over_server_listens_on():
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this system")
    first = AddressPool(random.Random(7)).allocate()
    with socket.socket() as stale:  # e.g. the split server of a killed run
        stale.bind((first, 0))
        stale.listen()
        got = AddressPool(random.Random(7)).allocate()
    assert got != first
    assert ipaddress.ip_address(got).is_loopback


def test_runs_draw_different_loopback_addresses_that_can_be_bound():
    pools = [AddressPool() for _ in range(5)]
    addresses = [pool.allocate() for pool in pools]
    assert len(set(addresses)) == 5
    mine = AddressPool()
    two = [mine.allocate(), mine.allocate()]
    assert two[0] != two[1]
    for address in addresses + two:
        assert ipaddress.ip_address(address).is_loopback
        assert address != "127.0.0.1"
        with socket.socket() as sock:
            sock.bind((address, 0))
