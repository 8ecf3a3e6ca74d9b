"""Shared fixtures: a real NETCONF server of ours on 127.0.0.1, run on an event loop in a
background thread so that synchronous third-party clients (ncclient) can talk to it."""
from __future__ import annotations

import asyncio
import contextlib
import pathlib
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from ncclient import manager

from devices.base import DEMO_PASSWORDS
from devices.host import DeviceHost
from devices.topology import Topology, default_topology
from models.service import SESSIONS_FILTER, ServiceView
from netconf_core import Endpoint, NetconfClient, NetconfServer, Schema, User, standard_nacm
from tools.cmd_demo import Operator
from tools.stack import Stack

TEST_YANG = pathlib.Path(__file__).parent / "yang"
ENGINE_NS = "urn:qstrata:yang:qs-engine-test"


class LoopThread:
    """An asyncio loop in a daemon thread; `run(coro)` waits for the coroutine's result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="session")
def engine_schema() -> Schema:
    return Schema(["qs-engine-test"], [TEST_YANG])


class RunningServer:
    def __init__(self, loop: LoopThread, server: NetconfServer):
        self.loop = loop
        self.server = server
        self.port = server.port

    def connect(self, user: str = "admin", password: str = "admin-pw", **kw):
        return manager.connect(host="127.0.0.1", port=self.port, username=user, password=password,
                               hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=30, **kw)


class HostedDevices:
    """A topology's devices in a DeviceHost on a LoopThread, for controller tests: each test's
    stack starts its controllers over `devices` and stops them in `close` before the host."""

    def __init__(self, topology: Topology) -> None:
        self.loop = LoopThread()
        self.topology = topology
        self.host = DeviceHost(topology, seed=1, insecure_sae_header=True)   # controller tests: no ETSI 014 call
        self.run(self.host.start())
        self.twin = self.host.network.twin
        self.devices = {row.id: Endpoint(row.id, row.host, row.port, "admin", "admin", host_key=row.host_key)
                        for row in self.host.table()}
        self.kinds = {row.id: row.kind for row in self.host.table()}

    def of_kind(self, *kinds: str) -> list[Endpoint]:
        return [endpoint for name, endpoint in self.devices.items() if self.kinds[name] in kinds]

    def run(self, coro):
        return self.loop.run(coro)

    def close(self, *controllers) -> None:
        """Stop the controllers (in the order given), then the devices and the loop."""
        for controller in controllers:
            self.run(controller.stop())
        self.run(self.host.stop())
        self.loop.close()

    def ncclient(self, port: int):
        return manager.connect(host="127.0.0.1", port=port, username="admin", password="admin",
                               hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=30)

    @staticmethod
    async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
        """Wait (bounded) until `condition` holds: events travel through notifications."""
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.05)


class ForwardingStack(HostedDevices):
    """Madrid devices, a connectivity controller and a forwarding controller over them (its
    `resync_period` and other options given), both synced; `client()` reaches the forwarding
    controller, `client(device)` a device."""

    USERS = {"admin": User(password="admin"), "monitor": User(password="monitor")}

    def __init__(self, resync_period: float = 3600, **forwarding_options) -> None:
        from controller.connectivity import ConnectivityController
        from controller.forwarding import ForwardingController

        super().__init__(default_topology())
        fibre = self.of_kind("fibre-plant", "optical-switch")
        self.connectivity = ConnectivityController("connectivity", fibre, self.USERS, resync_period=3600)
        self.run(self.connectivity.start())
        self.ctl = ForwardingController(
            "forwarding", self.of_kind("qkd-node"),
            Endpoint("connectivity", "127.0.0.1", self.connectivity.port, "admin", "admin",
                     host_key=self.connectivity.server.public_host_key), self.USERS,
            km_by_site={km.site: km.id for km in self.topology.key_managers}, resync_period=resync_period,
            **forwarding_options)
        self.run(self.ctl.start())
        self.run(self.connectivity.wait_synced())
        self.run(self.ctl.wait_synced())

    def close(self) -> None:
        super().close(self.ctl, self.connectivity)

    async def client(self, device: str | None = None):
        port = self.devices[device].port if device else self.ctl.port
        return await NetconfClient.connect("127.0.0.1", port, "admin", password="admin")


@pytest.fixture
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.close()


def start_server(loop_thread: LoopThread, schema: Schema, **kw) -> RunningServer:
    async def make():
        server = NetconfServer(schema, {"admin": User(password="admin-pw"), "reader": User(password="reader-pw")},
                               nacm=standard_nacm(["admin"], ["reader"]), **kw)
        await server.start()
        return server
    return RunningServer(loop_thread, loop_thread.run(make()))


@pytest.fixture
def engine(loop_thread, engine_schema, tmp_path):
    running = start_server(loop_thread, engine_schema, datastore_dir=tmp_path / "ds")
    yield running
    loop_thread.run(running.server.stop())


@dataclass
class ServedProcess:
    """`qstrata serve` (of the engine test model unless told otherwise), as a subprocess."""

    process: subprocess.Popen
    port: int
    password: str


ENGINE_TEST_SERVE = ("--yang", str(TEST_YANG), "--module", "qs-engine-test", "--user", "admin")


@contextlib.contextmanager
def qstrata_serve(datastore_dir: pathlib.Path | None = None, crash_on_exit: bool = False,
                  serve_args: Sequence[str] = ENGINE_TEST_SERVE) -> Iterator[ServedProcess]:
    """Run `qstrata serve SERVE_ARGS` (the engine test model by default) on a free port, with a
    fresh password, its datastores in `datastore_dir` if given; stop it on exit, or kill it
    (SIGKILL, as a crash) with `crash_on_exit`."""
    password = secrets.token_urlsafe(12)
    qstrata = str(pathlib.Path(sys.executable).with_name("qstrata"))
    stored = ["--datastore-dir", str(datastore_dir)] if datastore_dir is not None else []
    process = subprocess.Popen([qstrata, "serve", *serve_args, "--port", "0", f"--password={password}", *stored],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+) ", banner)
        assert match, f"no port in {banner!r}"
        yield ServedProcess(process, int(match.group(1)), password)
    finally:
        if crash_on_exit:
            process.kill()
        else:
            process.terminate()
        process.wait(10)


def stack_scenario(tmp_path: pathlib.Path, body, *, wait_s: float, bound_s: float,
                   topology: Topology | None = None) -> None:
    """Run `body(stack, operator)` against a fresh stack of `topology` (Madrid by default) whose
    state lives under tmp_path, then stop everything; the whole within `bound_s` seconds."""
    async def run() -> None:
        stack = Stack(topology or default_topology(), state_dir=tmp_path / "stack", passwords=DEMO_PASSWORDS)
        await stack.start()
        try:
            async with Operator(stack, wait_s) as operator:
                await body(stack, operator)
        finally:
            await stack.stop()
    asyncio.run(asyncio.wait_for(run(), bound_s))


async def until(check, what: str, timeout: float = 30.0, period: float = 0.2):
    """Poll the async `check` until it returns something true, and return that; fail naming
    `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        assert loop.time() < deadline, f"{what} did not happen within {timeout:g} s"
        await asyncio.sleep(period)
    return value


async def read_sessions(nc, flt: str = SESSIONS_FILTER) -> dict[str, dict[str, str]]:
    """Status, reason, path (as 'node - node') and delivered keys of every session on a service
    controller (that `flt` selects)."""
    data = await nc.get(filter=("subtree", flt))
    return {name: {"status": s.status or "", "reason": s.reason, "path": " - ".join(h.node_id for h in s.path),
                   "delivered-keys": str(s.delivered_keys)}
            for name, s in ServiceView.parse(data).sessions.items()}
