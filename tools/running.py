"""What the long-running commands (`serve`, `devices up`, `up`) share: reading the topology
argument with a clear error, and waiting for Ctrl-C or SIGTERM."""
from __future__ import annotations

import asyncio
import pathlib
import signal
import sys

from devices.topology import Topology, TopologyError, default_topology, load_topology


def topology_argument(path: pathlib.Path | None, speed: float, command: str) -> Topology | int:
    """The topology to run (the embedded Madrid one by default), or, after printing why not,
    the exit code: 2 for a bad --speed, 1 for a bad topology file."""
    if not speed > 0:
        print(f"qstrata {command}: --speed must be > 0, got {speed}", file=sys.stderr)
        return 2
    try:
        return load_topology(path) if path else default_topology()
    except TopologyError as error:
        print(str(error), file=sys.stderr)
        return 1


async def until_stopped() -> None:
    """Return at the first SIGINT (Ctrl-C) or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
