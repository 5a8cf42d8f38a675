"""What the Python engine benchmarks share (bench/asgi.py, snapshots.py, priorities.py): a free
loopback port, a process's CPU time from /proc, and waiting for a server to listen."""

from __future__ import annotations

import os
import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """`cmd` under `taskset -c cpu` when a CPU is given (taskset execs it: the same pid)."""
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]
