"""The devices level over several worker processes (`devices.workers` of a devices deployment).

The parent process runs the network's twin service (unless `devices.twin` names one), splits
the devices over N workers (`split_devices`), and starts every worker at once as
`qstrata run devices` with a deployment of its own (`worker_deployments`): the same users,
host key, certificates, ports and state directory, `devices.run` its share of the devices and
`devices.twin` the parent's service. Each device is still its own NETCONF server on its own
port; the devices reach each other and the twin over the network only, as in one process.

The parent is ready once every worker has printed its ready line; its table is the workers'
tables together. SIGTERM to the parent stops the workers (SIGTERM, SIGKILL after
`STOP_TIMEOUT_S`). A worker that dies makes `failed` complete: the level ends with an error,
and whoever runs the level restarts it (tools/supervisor.py); nothing is restarted here.
Workers are started with `--parent-pid` and `--parent-signal KILL`: if the parent is killed,
even with SIGKILL, the kernel kills them too, as it would one process holding every device.
A worker's stderr (its log) is passed on to the parent's once it is ready; a worker that
fails before makes `start` raise `WorkersError` with what it said.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile

from tools.device_table import parse_table
from tools.deployment import Deployment, TwinPeer, write_deployment
from tools.supervisor import _describe

STOP_TIMEOUT_S = 30.0
LINE_LIMIT = 1 << 20
ERROR_PREFIX = "qstrata run devices: "
LOG_TAIL_LINES = 20
log = logging.getLogger(__name__)


class WorkersError(OSError):
    """A worker could not start: what it said."""


def split_devices(topology, device_ids: list[str], workers: int) -> list[list[str]]:
    """`device_ids` (in topology order) in at most `workers` shares of about equal size.

    Devices speak to one another over the network wherever they run, so no split saves
    device-to-device traffic. What the devices of one process share is that process's
    connection to the twin service: one event stream, and one fetch of each link's key stream
    for all its key managers. So the devices of a site (its key manager, QKD nodes, switches,
    quantum nodes) stay in one share, and the sites are cut into runs in topology order, which
    for the shipped and generated networks (rings with chords) keeps most fibre neighbours
    together: both ends of such a link, and the key managers of both ends, are in one process.
    Devices of no site (the fibre plants) are groups of one. Shares are balanced by device
    count (memory and polling load grow per device): each takes sites until it holds its fair
    part of what is left, so two shares differ by less than one site's devices."""
    site_of = {d.id: d.site for d in (*topology.switches, *topology.qkd_nodes, *topology.key_managers,
                                      *topology.quantum_nodes) if getattr(d, "site", None)}
    order = {s.id: i for i, s in enumerate(topology.sites)}
    groups: dict[tuple, list[str]] = {}
    for device_id in device_ids:
        site = site_of.get(device_id)
        groups.setdefault(("site", site) if site else ("alone", device_id), []).append(device_id)
    ordered = sorted(groups.values(), key=lambda g: order.get(site_of.get(g[0]), -1))
    count = max(1, min(workers, len(ordered)))
    shares: list[list[str]] = []
    left, fair = len(device_ids), 0.0
    for index, group in enumerate(ordered):
        to_open = count - len(shares)
        if not shares or to_open and (len(shares[-1]) + len(group) / 2 > fair or len(ordered) - index <= to_open):
            shares.append([])
            fair = left / to_open
        shares[-1].extend(group)
        left -= len(group)
    return shares


def worker_deployments(d: Deployment, shares: list[list[str]], twin: TwinPeer) -> list[Deployment]:
    """The deployment of each worker: `d` with its share of the devices, the twin, one process."""
    part = d.part
    return [dataclasses.replace(d, name=f"{d.name}-worker-{index}", part=dataclasses.replace(
        part, run=tuple(share), twin=twin, workers=1, speed=1.0,
        ports={device: p for device, p in part.ports.items() if device in share}))
        for index, share in enumerate(shares, 1)]


class _Worker:
    def __init__(self, name: str, config: pathlib.Path, devices: list[str]) -> None:
        self.name, self.config, self.devices = name, config, devices
        self.process: asyncio.subprocess.Process | None = None
        self.table: list[str] = []        # the lines of its device table
        self.said: list[str] = []         # its stderr until it is ready
        self.ready = False
        self.tasks: list[asyncio.Task] = []


class DeviceWorkers:
    """The devices of deployment `d` over `workers` processes; `twin`: the twin service to run
    (a devices.twin_service.TwinService, not started), or None when `d` names the network's.
    Like a DeviceHost it has `start`, `stop`, `table()` and `devices`."""

    def __init__(self, d: Deployment, topology, device_ids: list[str], workers: int, twin=None, *,
                 ready: str) -> None:
        self.deployment = d
        self.ready = ready   # what a worker's ready line holds
        self.twin = twin
        self.topology = topology
        self.devices = list(device_ids)
        self.shares = split_devices(topology, self.devices, workers)
        self.failed: asyncio.Future | None = None   # completes with why, when a worker dies
        self._workers: list[_Worker] = []
        self._scratch: pathlib.Path | None = None
        self._rows: dict = {}
        self._stopping = False

    async def start(self) -> None:
        """Start the twin service and every worker at once; once all are ready return, or, when
        one fails first, stop everything and raise WorkersError."""
        self.failed = asyncio.get_running_loop().create_future()
        self._stopping = False
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._scratch = pathlib.Path(tempfile.mkdtemp(prefix="qstrata-workers-"))   # 0700: passwords, token
        twin = self.deployment.part.twin
        if self.twin is not None:
            await self.twin.start()
            token = self._scratch / "twin.token"
            descriptor = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(self.twin.token)
            twin = TwinPeer(self.twin.host, self.twin.port, token_file=token)
        for worker_deployment, share in zip(worker_deployments(self.deployment, self.shares, twin), self.shares):
            config = self._scratch / f"{worker_deployment.name}.yaml"
            write_deployment(config, worker_deployment)
            self._workers.append(_Worker(worker_deployment.name, config, share))
        await asyncio.gather(*(self._spawn(w) for w in self._workers))
        waits = [asyncio.ensure_future(self._until_ready(w)) for w in self._workers]
        try:
            for done in asyncio.as_completed(waits):
                await done
        finally:
            for wait in waits:
                wait.cancel()
        rows = {row.id: row for w in self._workers for row in parse_table(w.table)}
        key = _public_host_key(self.deployment)
        self._rows = {device: dataclasses.replace(rows[device], host_key=key) for device in self.devices}

    async def _spawn(self, worker: _Worker) -> None:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "run", "devices", "--config", str(worker.config),
            "--log-level", level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "WARNING",
            "--parent-pid", str(os.getpid()), "--parent-signal", "KILL",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            limit=LINE_LIMIT)
        loop = asyncio.get_running_loop()
        worker.tasks = [loop.create_task(self._read_stderr(worker)), loop.create_task(self._watch(worker))]

    async def _until_ready(self, worker: _Worker) -> None:
        """Read the worker's device table until its ready line; raise WorkersError if it ends first."""
        while True:
            line = await worker.process.stdout.readline()
            if not line:
                await worker.process.wait()
                await asyncio.sleep(0.1)   # its last words on stderr
                raise WorkersError(_problem(worker))
            text = line.decode(errors="replace").rstrip("\n")
            if self.ready in text:
                break
            worker.table.append(text)
        worker.ready = True
        for text in worker.said:
            print(text, file=sys.stderr, flush=True)
        worker.said.clear()
        asyncio.get_running_loop().create_task(_drain(worker.process.stdout))

    async def _read_stderr(self, worker: _Worker) -> None:
        while line := await worker.process.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            if worker.ready:
                print(text, file=sys.stderr, flush=True)
            else:
                worker.said.append(text)

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.process.wait()
        if worker.ready and not self._stopping and not self.failed.done():
            self.failed.set_result(f"{worker.name} (pid {worker.process.pid}, {len(worker.devices)} devices) "
                                   f"died ({_describe(code)})")

    async def stop(self) -> None:
        """Stop every worker (SIGTERM; SIGKILL after STOP_TIMEOUT_S), then the twin service."""
        self._stopping = True
        running = [w for w in self._workers if w.process is not None and w.process.returncode is None]
        for worker in running:
            worker.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.gather(*(w.process.wait() for w in running))
        except TimeoutError:
            for worker in running:
                if worker.process.returncode is None:
                    log.warning("%s (pid %d) did not stop in %g s; killing it", worker.name, worker.process.pid,
                                STOP_TIMEOUT_S)
                    worker.process.kill()
            await asyncio.gather(*(w.process.wait() for w in running))
        for worker in self._workers:
            for task in worker.tasks:
                task.cancel()
        self._workers = []
        if self.twin is not None:
            await self.twin.stop()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def table(self) -> list:
        """Every device's row (devices.host.DeviceRow), in topology order."""
        return list(self._rows.values())

    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [w.process.pid for w in self._workers if w.process is not None]


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def _public_host_key(d: Deployment) -> str:
    from netconf_core import public_key_line
    from tools.deployment import host_key

    return public_key_line(host_key(d))


def _problem(worker: _Worker) -> str:
    """What a worker that ended before it was ready said: its error report, else its log's end."""
    said = worker.said
    start = next((i for i, line in enumerate(said) if line.startswith(ERROR_PREFIX)), None)
    if start is not None:
        return "\n".join([said[start][len(ERROR_PREFIX):]] + said[start + 1:])
    tail = "\n".join(said[-LOG_TAIL_LINES:])
    return f"{worker.name} exited ({_describe(worker.process.returncode)}) before it was ready" + \
        (f":\n{tail}" if tail else "")

