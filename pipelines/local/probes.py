"""Readiness probes of daemon steps: ``httpGet``, ``tcpSocket`` and ``exec``, against the daemon's address.

A probe is necessarily a poll. It starts after ``initialDelaySeconds`` and is retried quickly at first
(20 ms, doubling) up to the probe's ``periodSeconds`` (capped at 0.5 s on one host), and gives up when
the daemon's process exits.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["wait_ready"]


def _port(value: Any) -> int:
    return int(str(value))


def _check(probe: Mapping[str, Any], ip: str, env: Mapping[str, str], cwd: Path) -> bool:
    timeout = float(probe.get("timeoutSeconds") or 1)
    if "httpGet" in probe:
        get = probe["httpGet"]
        scheme = str(get.get("scheme") or "HTTP").lower()
        host = get.get("host") or ip
        path = str(get.get("path") or "/")
        url = f"{scheme}://{host}:{_port(get.get('port'))}{path if path.startswith('/') else '/' + path}"
        request = urllib.request.Request(
            url, headers={h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return 200 <= int(response.status) < 400
        except (urllib.error.URLError, OSError, ValueError):
            return False
    if "tcpSocket" in probe:
        tcp = probe["tcpSocket"]
        try:
            with socket.create_connection((tcp.get("host") or ip, _port(tcp.get("port"))), timeout=timeout):
                return True
        except OSError:
            return False
    if "exec" in probe:
        command = list(probe["exec"].get("command") or [])
        try:
            done = subprocess.run(
                command,
                env=dict(env),
                cwd=str(cwd),
                timeout=timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0
    return True


def wait_ready(
    probe: Mapping[str, Any] | None,
    ip: str,
    env: Mapping[str, str],
    cwd: Path,
    exited: Callable[[float], bool],
) -> bool:
    """Block until ``probe`` passes (True) or the process exits (False); ``exited(t)`` waits up to ``t``."""
    if not probe:
        return not exited(0)
    if exited(float(probe.get("initialDelaySeconds") or 0)):
        return False
    period = min(float(probe.get("periodSeconds") or 10), 0.5)
    delay = 0.02
    threshold = int(probe.get("successThreshold") or 1)
    successes = 0
    while True:
        started = time.monotonic()
        if _check(probe, ip, env, cwd):
            successes += 1
            if successes >= threshold:
                return True
        else:
            successes = 0
        if exited(max(0.0, delay - (time.monotonic() - started))):
            return False
        delay = min(delay * 2, period)
