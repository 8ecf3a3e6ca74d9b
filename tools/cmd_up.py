"""`qstrata up [TOPOLOGY]`: run the whole stack, every level its own OS process (`qstrata run
LEVEL --config FILE`): the emulated devices, the three stratum controllers and the
orchestrator. Print the address, port and credentials of every level, and write them to
`qstrata-stack.json` in the working directory, where `qstrata intent`, `status` and `fault`
find them. It also starts the operator's web console over them and prints its address
(`qstrata console`; --no-console: not). Ctrl-C or SIGTERM stops every process.

In the state directory (a temporary one without --state-dir) it keeps what a restart reuses:
`deployments/LEVEL.yaml` (each level's deployment file, 0600), `ports.json` (every port),
`credentials.json` (generated passwords, 0600), each level's SSH host key (0600; every
deployment pins the host keys of its peers), `pki/` (the local CA and the ETSI 014
certificates) and `logs/LEVEL.log` (each process's log). A level that dies is started again
after a short back-off (tools/supervisor.py), with a line saying so.

The orchestrator listens on port 8830 unless --port says otherwise; the other levels take
free ports of 127.0.0.1 the first time, and keep them.

A topology whose sites name domains runs as a federation (FederatedProcessStack): the plant's
devices, per domain its own controllers, orchestrator and federation agent
(deployments/<domain>/), and the federation platform, each its own process; `up` then admits
every domain and agrees transit between neighbours (tools/federation_deploy.py `federate`),
and prints each domain's levels and the platform's accounts (docs/deployment.md, "A
federation"). `qstrata intent` and `status` then take `--domain`.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import random
import socket
import sys
import tempfile

from devices.topology import Topology
from tools.running import topology_argument, until_stopped

STATE_FILE = "qstrata-stack.json"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_ORCHESTRATOR_PORT = 8830
DEFAULT_USER = ("admin", "admin")
LEVEL_ORDER = ("devices", "connectivity", "forwarding", "service", "orchestrator")
PORTS_FILE = "ports.json"
READY_TIMEOUT_S = 180.0
PORT_POOL_START = 20000   # ports handed to the levels are taken from here up to the ephemeral range


def register(subparsers: argparse._SubParsersAction) -> None:
    from tools.stack import add_security_options

    parser = subparsers.add_parser("up", help="run devices, controllers and orchestrator, each its own process; "
                                              "print every level",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("topology", nargs="?", type=pathlib.Path,
                        help="topology file (default: the embedded Madrid network)")
    parser.add_argument("--port", type=int, default=DEFAULT_ORCHESTRATOR_PORT,
                        help=f"the orchestrator's NETCONF port (default {DEFAULT_ORCHESTRATOR_PORT}; 0: the one kept "
                             f"in the state directory, else any free port)")
    parser.add_argument("--state-dir", type=pathlib.Path,
                        help="keep deployments, ports, credentials, host keys, certificates, datastores, key pools "
                             "and the intent store here across runs (default: a temporary directory)")
    parser.add_argument("--speed", type=float, default=1.0, help="emulated seconds per real second (default 1)")
    add_security_options(parser)
    from tools.cmd_devices import add_workers_option

    add_workers_option(parser)   # the devices level's worker processes
    parser.add_argument("--console-port", type=int, default=0,
                        help="the operator's web console's port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--no-console", action="store_true", help="do not start the operator's web console")
    parser.add_argument("--peering", metavar="A,B",
                        help="of a topology with domains: run only domains A and B, peered directly by their "
                             "peering agents with no federation platform (Y.QKDNf Figure 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    topology = topology_argument(args.topology, args.speed, "up")
    if isinstance(topology, int):
        return topology
    if not 0 <= args.port <= 65535:
        print(f"qstrata up: --port must be within 0..65535, got {args.port}", file=sys.stderr)
        return 2
    from tools.cmd_devices import workers_argument

    if not workers_argument(getattr(args, "workers", None), "up"):
        return 2
    peering = getattr(args, "peering", None)
    if peering is not None:
        pair = tuple(part.strip() for part in peering.split(","))
        try:
            _check_peering(topology, pair)
        except ValueError as error:
            print(f"qstrata up: --peering: {error}", file=sys.stderr)
            return 2
        args.peering = pair
    if topology.domains:   # a federation: every domain its own stack, and the platform (or a peering)
        return asyncio.run(_run_federation(topology, args))
    return asyncio.run(_run(topology, args))


async def _start(stack: ProcessStack, stopped: asyncio.Task, what: str) -> int | None:
    """Start `stack` unless a signal (`stopped`) comes first. None once it runs; else the exit
    status: 0 when stopped while starting, 1 when it could not start (said on stderr)."""
    from tools.supervisor import SupervisorError

    starting = asyncio.get_running_loop().create_task(stack.start())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():   # a signal while starting
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return 0
    try:
        starting.result()
    except (SupervisorError, OSError, TimeoutError) as error:
        print(f"qstrata up: cannot start the {what}: {str(error) or type(error).__name__}", file=sys.stderr)
        return 1
    return None


async def _run(topology: Topology, args: argparse.Namespace) -> int:
    stack = ProcessStack(topology, args.topology.absolute() if args.topology else None, args.state_dir, args.speed,
                         args.port, demo_credentials=args.demo_credentials,
                         insecure_sae_header=args.insecure_sae_header, say=lambda line: print(line, flush=True),
                         workers=getattr(args, "workers", None))
    stopped = asyncio.get_running_loop().create_task(until_stopped())
    state_file = pathlib.Path.cwd() / STATE_FILE
    wrote = False
    try:
        from tools.entanglement_deploy import stack_levels

        print(f"starting network {topology.name}: {len(stack_levels(topology, LEVEL_ORDER))} processes ...",
              flush=True)
        status = await _start(stack, stopped, "stack")
        if status is not None:
            return status
        rows = stack.table()
        print(format_levels(rows))
        write_state(state_file, topology.name, rows)
        wrote = True
        user, password = rows[-1].read_write
        reader, reader_password = rows[-1].read_only
        print(f"\nnetwork {topology.name}: {len(rows)} NETCONF servers in {len(stack.plan.levels)} processes on "
              f"{DEFAULT_HOST}; users {user}/{password} (read-write), {reader}/{reader_password} (read-only). "
              f"Deployments in {stack.plan.deployments_dir}, logs in {stack.plan.logs_dir}. Wrote {STATE_FILE}.",
              flush=True)
        if stack.plan.curl:
            print(f"ETSI 014 over HTTPS with a client certificate per SAE, for example:\n  {stack.plan.curl}",
                  flush=True)
        console = None
        if not getattr(args, "no_console", True):   # the operator's console over the stack
            from tools.console_stack import start_console

            console = await start_console(rows, topology.name, args.console_port,
                                          say=lambda line: print(line, flush=True),
                                          state_dir=stack.plan.deployments_dir.parent / "console")  # layouts
        print("Ctrl-C stops.", flush=True)
        try:
            await stopped
        finally:
            if console is not None:
                await console.stop()
    finally:
        stopped.cancel()
        if wrote:
            state_file.unlink(missing_ok=True)
        await stack.stop()
    print("stopped", flush=True)
    return 0


class ProcessStack:
    """The stack of `qstrata up`: a deployment per level written into `state_dir` (a temporary
    directory without one, removed by `stop`), every level its own OS process under a
    Supervisor. It offers an operator what the in-process tools.stack.Stack does:
    `start()`, `stop()`, `table()`, `topology`, `sae_ssl(sae_id)`. `say` gets the supervisor's
    lines and the levels' output (None: dropped)."""

    def __init__(self, topology: Topology, topology_file: pathlib.Path | None = None,
                 state_dir: pathlib.Path | None = None, speed: float = 1.0, orchestrator_port: int = 0, *,
                 demo_credentials: bool = False, insecure_sae_header: bool = False,
                 say=None, ready_timeout: float = READY_TIMEOUT_S, workers: int | None = None):
        self.topology = topology
        self.workers = workers   # the devices level's processes (None: one per core)
        self.topology_file = topology_file
        self.state_dir = state_dir
        self.speed = speed
        self.orchestrator_port = orchestrator_port
        self.demo_credentials, self.insecure_sae_header = demo_credentials, insecure_sae_header
        self.say = say or (lambda line: None)
        self.ready_timeout = ready_timeout
        self.plan: StackPlan | None = None
        self.supervisor = None
        self._scratch: tempfile.TemporaryDirectory | None = None

    async def start(self) -> None:
        """Write the deployments and start every level; when they are not all ready in time
        (or one fails before it is), stop what started and raise SupervisorError."""
        from tools.supervisor import Supervisor

        if self.state_dir is None and self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="qstrata-up-")
        state = pathlib.Path(self._scratch.name if self._scratch else self.state_dir).absolute()
        try:
            self.plan = self._plan(state)
            self.supervisor = Supervisor(self.plan.programs(), say=self.say)
            await self.supervisor.start(self.ready_timeout)
        except BaseException:
            await self.stop()
            raise

    def _plan(self, state: pathlib.Path):
        """Write the deployments into `state`; the plan's programs are what the supervisor runs."""
        return plan_stack(self.topology, self.topology_file, state, self.speed, self.orchestrator_port,
                          self.demo_credentials, self.insecure_sae_header, workers=self.workers)

    async def stop(self) -> None:
        """Stop every level (safe to call twice, or after a failed start)."""
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    async def __aenter__(self) -> ProcessStack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def table(self) -> list:
        """Every NETCONF server: devices first, then the controllers bottom-up (tools.stack.Level rows)."""
        return self.plan.rows if self.plan else []

    def sae_ssl(self, sae_id: str):
        """A TLS context presenting SAE `sae_id`'s certificate (None in the insecure header mode)."""
        from tools.pki import client_context

        return client_context(self.plan.pki.sae(sae_id)) if self.plan and self.plan.pki else None


# --- the stack as deployments --------------------------------------------------------------

@dataclasses.dataclass
class StackPlan:
    """The deployment of each level (written under `deployments_dir`) and the rows of the stack file."""

    deployments_dir: pathlib.Path
    logs_dir: pathlib.Path
    rows: list
    curl: str | None = None
    pki: object = None            # the stack's KeyDeliveryPki (None in the insecure header mode)
    levels: tuple[str, ...] = LEVEL_ORDER   # bottom-up; with the entanglement levels over quantum nodes

    def config(self, level: str) -> pathlib.Path:
        return self.deployments_dir / f"{level}.yaml"

    def programs(self) -> list:
        """One `qstrata run LEVEL --config FILE` per level, bottom-up."""
        from tools.cmd_run import READY
        from tools.supervisor import Program

        return [Program(level, (sys.executable, "-m", "tools.cli", "run", level, "--config", str(self.config(level)),
                                "--parent-pid", str(os.getpid())),
                        ready=READY, log_file=self.logs_dir / f"{level}.log") for level in self.levels]


def plan_stack(topology: Topology, topology_file: pathlib.Path | None, state_dir: pathlib.Path, speed: float,
               orchestrator_port: int, demo_credentials: bool, insecure_sae_header: bool,
               workers: int | None = None) -> StackPlan:
    """Write every level's deployment into `state_dir` (ports, credentials, host keys and
    certificates kept there and reused) and return the plan."""
    from devices.base import ADMIN_USER, MONITOR_USER
    from devices.host import device_builders
    from devices.key_manager import KeyManagerDevice
    from netconf_core import persistent_host_key, public_key_line
    from netconf_core.server import HOST_KEY_FILE
    from tools.cmd_devices import etsi014_section, stack_logins
    from tools.deployment import (DevicePorts, DevicesPart, Deployment, ForwardingPart, Listen, OrchestratorPart,
                                  Peer, ServicePart, write_deployment)
    from tools.entanglement_deploy import add_entanglement_levels, stack_levels
    from tools.stack import (CONNECTIVITY_MODULES, FORWARDING_MODULES, PKI_DIR, QUANTUM_NODE_MODULES, SERVICE_MODULES,
                             KeyDeliveryPki, Level, demo_passwords, sae_curl, stack_passwords)

    state_dir.mkdir(parents=True, exist_ok=True)
    devices = [(device_id, build.func) for device_id, build in device_builders(topology, None)]
    key_managers = [d for d, cls in devices if issubclass(cls, KeyManagerDevice)]
    order = stack_levels(topology, LEVEL_ORDER)
    ports = _ports(state_dir / PORTS_FILE, [d for d, _ in devices], key_managers, orchestrator_port, order[1:])
    passwords = demo_passwords(demo_credentials) or stack_passwords(state_dir)
    users = stack_logins(passwords)
    # The host key files are where the in-process Stack keeps them: either shape runs on one state directory.
    key_files = {"devices": state_dir / "devices" / HOST_KEY_FILE,
                 **{level: state_dir / level / "datastores" / HOST_KEY_FILE for level in order[1:]}}
    public = {level: public_key_line(persistent_host_key(path)) for level, path in key_files.items()}

    def peer(name: str, port: int, level: str) -> Peer:
        return Peer(name, DEFAULT_HOST, port, ADMIN_USER, password=passwords[ADMIN_USER], host_key=public[level])

    def device_peers(modules: set[str]) -> tuple[Peer, ...]:
        return tuple(peer(d, ports["devices"][d]["port"], "devices") for d, cls in devices
                     if modules & set(cls.modules))

    def controller(level: str) -> Peer:
        return peer(level, ports["levels"][level], level)

    def listen(level: str) -> Listen:
        return Listen(DEFAULT_HOST, key_files[level], None if level == "devices" else ports["levels"][level])

    pki = None if insecure_sae_header else KeyDeliveryPki(state_dir / PKI_DIR)
    etsi014 = etsi014_section(pki, topology)
    for sae in topology.saes if pki is not None else ():
        pki.sae(sae.id)
    deployments = {
        "devices": Deployment("devices", "devices", listen("devices"), users, (), state_dir / "devices", DevicesPart(
            etsi014, topology_file, speed,
            {d: DevicePorts(p["port"], p.get("etsi014_port")) for d, p in ports["devices"].items()},
            workers=workers)),
        "connectivity": Deployment("connectivity", "connectivity", listen("connectivity"), users,
                                   device_peers(CONNECTIVITY_MODULES), state_dir / "connectivity"),
        "forwarding": Deployment("forwarding", "forwarding", listen("forwarding"), users,
                                 device_peers(FORWARDING_MODULES) + (controller("connectivity"),),
                                 state_dir / "forwarding",
                                 ForwardingPart("connectivity", {km.site: km.id for km in topology.key_managers})),
        "service": Deployment("service", "service", listen("service"), users,
                              device_peers(SERVICE_MODULES) + (controller("forwarding"), controller("connectivity")),
                              state_dir / "service", ServicePart("forwarding", "connectivity")),
        "orchestrator": Deployment("orchestrator", "orchestrator", listen("orchestrator"), users,
                                   tuple(controller(level) for level in ("service", "forwarding", "connectivity")),
                                   None, OrchestratorPart("service", "forwarding", "connectivity",
                                                          state_dir / "orchestrator")),
    }
    if "entanglement" in order:
        add_entanglement_levels(deployments, listen, users, device_peers(QUANTUM_NODE_MODULES), controller, state_dir)
    plan = StackPlan(state_dir / "deployments", state_dir / "logs", [], pki=pki, levels=order)
    for level, deployment in deployments.items():
        write_deployment(plan.config(level), deployment)
    read_write = (ADMIN_USER, passwords[ADMIN_USER])
    read_only = (MONITOR_USER, passwords[MONITOR_USER])
    scheme = "http" if pki is None else "https"
    urls = {km: f"{scheme}://{DEFAULT_HOST}:{ports['devices'][km]['etsi014_port']}" for km in key_managers}
    plan.rows = [Level(cls.kind, d, DEFAULT_HOST, ports["devices"][d]["port"], read_write, read_only, urls.get(d),
                       public["devices"]) for d, cls in devices]
    plan.rows += [Level(level, level, DEFAULT_HOST, ports["levels"][level], read_write, read_only,
                        host_key=public[level]) for level in order[1:]]
    if pki is not None and len(topology.saes) >= 2:
        master, slave = topology.saes[0], topology.saes[1]
        url = next(r.etsi014_url for r in plan.rows if r.name == master.km)
        plan.curl = sae_curl(pki, master.id, slave.id, url)
    return plan


def _ports(path: pathlib.Path, devices: list[str], key_managers: list[str], orchestrator_port: int,
           level_names: tuple[str, ...] = LEVEL_ORDER[1:]) -> dict:
    """Every port of the stack: those kept in `path`, free ones of 127.0.0.1 for the others
    (then kept there too); the orchestrator's is `orchestrator_port` unless it is 0."""
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    levels = {k: v for k, v in (kept.get("levels") or {}).items() if isinstance(v, int) and v > 0}
    known = {k: v for k, v in (kept.get("devices") or {}).items() if isinstance(v, dict)}
    if orchestrator_port:
        levels["orchestrator"] = orchestrator_port
    wanted = [("levels", level, None) for level in level_names if level not in levels]
    for device in devices:
        entry = known.setdefault(device, {})
        for key in ("port", "etsi014_port") if device in key_managers else ("port",):
            if not isinstance(entry.get(key), int) or entry[key] <= 0:
                wanted.append(("devices", device, key))
    taken = set(levels.values()) | {p for e in known.values() for p in e.values() if isinstance(p, int)}
    free = _free_ports(len(wanted), taken | {DEFAULT_ORCHESTRATOR_PORT})
    for (table, name, key), port in zip(wanted, free):
        if table == "levels":
            levels[name] = port
        else:
            known[name][key] = port
    ports = {"levels": levels, "devices": {d: known[d] for d in devices}}
    path.write_text(json.dumps(ports, indent=1))
    return ports


def _free_ports(count: int, avoid: set[int]) -> list[int]:
    """`count` distinct ports of 127.0.0.1 that are free now, none of `avoid`, taken below the
    kernel's ephemeral range when it leaves room: the levels bind them seconds later, and a
    port of that range may meanwhile become the local end of some outgoing connection."""
    low, _ = _ephemeral_range()
    pool = list(range(PORT_POOL_START, low)) if low - PORT_POOL_START >= 4 * count else []
    random.shuffle(pool)
    ports: list[int] = []
    for port in pool:
        if len(ports) == count:
            break
        if port not in avoid and _bindable(port):
            ports.append(port)
    sockets: list[socket.socket] = []
    try:   # too few below the range: free ones the kernel picks, held together so they differ
        while len(ports) < count:
            s = socket.socket()
            sockets.append(s)
            s.bind((DEFAULT_HOST, 0))
            if s.getsockname()[1] not in avoid and s.getsockname()[1] not in ports:
                ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535   # the IANA dynamic range


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((DEFAULT_HOST, port))
        except OSError:
            return False
    return True


def format_levels(rows: list) -> str:
    """The rows of `Stack.table()` as aligned text, controllers and orchestrator last."""
    header = ("LEVEL", "NAME", "NETCONF", "READ-WRITE", "READ-ONLY", "ETSI 014")
    lines = [(r.level, r.name, f"{r.host}:{r.port}", "/".join(r.read_write), "/".join(r.read_only),
              r.etsi014_url or "-") for r in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header] + lines)


def write_state(path: pathlib.Path, topology: str, rows: list, **more: object) -> None:
    """Who listens where (`rows`, and `more` sections), for the other commands; readable by
    this user only (it holds passwords)."""
    data = {"topology": topology, "pid": os.getpid(), "levels": [dataclasses.asdict(r) for r in rows], **more}
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(data, out, indent=1)


# --- how the other commands reach the stack ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    """Where one level listens and how to log in."""

    level: str
    host: str
    port: int
    user: str
    password: str
    host_key: str | None = None   # its OpenSSH public host key line, pinned when known
    known_hosts: str | None = None  # or a known_hosts file to check it against


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help=f"orchestrator address (default: from {STATE_FILE}, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int,
                        help=f"orchestrator NETCONF port (default: from {STATE_FILE}, else {DEFAULT_ORCHESTRATOR_PORT})")
    parser.add_argument("--user", help=f"NETCONF user (default: from {STATE_FILE}, else {DEFAULT_USER[0]})")
    parser.add_argument("--password", help=f"its password (default: from {STATE_FILE}, else {DEFAULT_USER[1]})")
    parser.add_argument("--stack-file", type=pathlib.Path, default=pathlib.Path(STATE_FILE),
                        help=f"the file `qstrata up` wrote (default ./{STATE_FILE})")
    parser.add_argument("--domain", help=f"in a federation's {STATE_FILE}: the domain whose levels to use "
                                         "(default: the first)")
    parser.add_argument("--known-hosts", type=pathlib.Path,
                        help=f"an OpenSSH known_hosts file to check the orchestrator's host key against "
                             f"(needed when --host/--port name a server {STATE_FILE} does not)")


class StackNotFound(Exception):
    pass


def levels(args: argparse.Namespace) -> dict[str, dict]:
    """The levels `qstrata up` wrote, by level (empty when there is no file)."""
    path: pathlib.Path = args.stack_file
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        rows = list(data["levels"])
        if "domains" in data:   # a federation: the plant's devices and one domain's levels
            domain = getattr(args, "domain", None) or next(iter(data["domains"]))
            if domain not in data["domains"]:
                raise StackNotFound(f"no domain {domain!r} in {path} (domains: {', '.join(data['domains'])})")
            rows += data["domains"][domain]
        return {row["level"]: row for row in rows}
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as error:
        raise StackNotFound(f"{path} is not a file written by `qstrata up`: {error}") from None


def target(args: argparse.Namespace, level: str = "orchestrator") -> Target:
    """Connection details of a level: flags (address and port for the orchestrator only),
    then the stack file, then the defaults of `qstrata up` (the orchestrator only). The
    orchestrator is reached as the read-write user (intents are edited there), the
    controllers as the read-only one (they are only read)."""
    row = levels(args).get(level)
    if level == "orchestrator":
        user = args.user or (row["read_write"][0] if row else DEFAULT_USER[0])
        password = args.password or (row["read_write"][1] if row else DEFAULT_USER[1])
        host, port = args.host or (row["host"] if row else DEFAULT_HOST), \
            args.port or (row["port"] if row else DEFAULT_ORCHESTRATOR_PORT)
        same = row is not None and (host, port) == (row["host"], row["port"])
        known_hosts = str(args.known_hosts) if getattr(args, "known_hosts", None) else None
        return Target(level, host, port, user, password, row.get("host_key") if same else None, known_hosts)
    if row is None:
        raise StackNotFound(f"no {level} level in {args.stack_file}: run `qstrata up` in this directory "
                            f"or give --stack-file")
    return Target(level, row["host"], row["port"], args.user or row["read_only"][0],
                  args.password or row["read_only"][1], row.get("host_key"))


async def connect(t: Target):
    from netconf_core.client import NetconfClient
    from netconf_core.ssh import trusted_host_keys

    # The host key `qstrata up` wrote is pinned, or the known_hosts file given; nothing else is trusted.
    if t.known_hosts:
        known_hosts = t.known_hosts
    elif t.host_key:
        known_hosts = trusted_host_keys(t.host_key)
    else:
        raise StackNotFound(f"no host key to check the {t.level} at {t.host}:{t.port} against: it is not the one "
                            f"in {STATE_FILE}; give --known-hosts")
    try:
        return await NetconfClient.connect(t.host, t.port, t.user, password=t.password, known_hosts=known_hosts,
                                           timeout=10)
    except (OSError, asyncio.TimeoutError) as error:
        raise StackNotFound(f"cannot reach the {t.level} at {t.host}:{t.port}: {error or type(error).__name__}; "
                            f"is `qstrata up` running?") from None


# --- a federation: every domain its own stack, and the platform ------------------------------

@dataclasses.dataclass
class FederationPlan:
    """The deployments of the whole federation and what `up` prints of it."""

    stack: object                          # the cmd_up StackPlan of the plant (devices, pki, rows of devices)
    domains: dict[str, list]               # domain -> its levels' rows (tools.stack.Level)
    platform: dict                         # the platform's address, host key and accounts (peering: {})
    borders: dict[str, tuple]              # domain -> its BorderLinks
    processes: list                        # supervisor Programs, the devices first
    peering: dict = dataclasses.field(default_factory=dict)   # provider -> its peering agent and accounts

    def programs(self) -> list:
        return self.processes

    @property
    def rows(self) -> list:
        """The plant's devices (each domain's levels are under `domains`)."""
        return self.stack.rows

    @property
    def pki(self):
        return self.stack.pki


def plan_federation(topology: Topology, topology_file: pathlib.Path | None, state_dir: pathlib.Path, speed: float,
                    demo_credentials: bool, insecure_sae_header: bool, workers: int | None = None,
                    peering: tuple[str, str] | None = None) -> FederationPlan:
    """Write every process's deployment into `state_dir`: the plant's devices as `qstrata up`
    plans them for one network, then per domain its levels (those planned for the whole
    plant, narrowed to the domain's devices, on ports, host keys and state of their own) and
    its agent, and the platform. Ports, passwords and keys are kept there and reused.

    With `peering` (two domains joined by an inter-domain link), only those two domains run,
    each with a peering agent (level federation-peer) in place of its federation agent, and no
    platform: the two providers federate directly (Y.QKDNf Figure 2)."""
    from netconf_core import persistent_host_key, public_key_line
    from netconf_core.server import HOST_KEY_FILE
    from tools.cmd_run import READY
    from tools.federation_deploy import (ADMIN, AGENT, CLIENT_KEY_FILE, DOMAIN_LEVELS, PLATFORM, PLATFORM_USER,
                                         border_km_peers, border_links, service_user)
    from tools.deployment import (ENROLMENT, INTENT_WRITER, PEER_LEVEL, PLATFORM_ADMIN, SERVICE_USER, BorderLinkEntry,
                                  Deployment, FederationAgentPart, FederationPart, Listen, Login, Peer, PeeringPart,
                                  PinnedMember, SaeEntry, load_deployment, write_deployment)
    from tools.stack import Level
    from tools.supervisor import Program

    stack = plan_stack(topology, topology_file, state_dir, speed, 0, demo_credentials, insecure_sae_header, workers)
    # The plant's levels as planned for one network: the templates of each domain's (not run themselves).
    templates = {level: load_deployment(stack.config(level)) for level in DOMAIN_LEVELS}
    for level in DOMAIN_LEVELS:
        stack.config(level).unlink()
    device_rows = [row for row in stack.rows if row.level not in DOMAIN_LEVELS]
    stack.rows = device_rows
    members = peering or topology.domains
    own_levels = DOMAIN_LEVELS + ((PEER_LEVEL,) if peering else ())
    ports = _federation_ports(state_dir, members, json.loads((state_dir / PORTS_FILE).read_text()), own_levels,
                              platform=not peering)
    passwords = _platform_passwords(state_dir, members, demo_credentials, peering is not None)
    key_files = {(domain, level): state_dir / domain / level / "datastores" / HOST_KEY_FILE
                 for domain in members for level in own_levels}
    if not peering:
        key_files[(PLATFORM, "")] = state_dir / "platform" / "datastores" / HOST_KEY_FILE
    public = {where: public_key_line(persistent_host_key(path)) for where, path in key_files.items()}
    member_keys = {d: _member_key_file(state_dir, d, PEER_LEVEL if peering else "agent") for d in members}
    member_public = {d: public_key_line(persistent_host_key(path)) for d, path in member_keys.items()}
    if peering:   # each provider's peering agent writes its intents to its own orchestrator with its key
        platform_logins = {d: Login(PLATFORM_USER, INTENT_WRITER, authorized_keys=(member_public[d],))
                           for d in members}
    else:
        client_key = persistent_host_key(state_dir / "platform" / CLIENT_KEY_FILE)
        platform_logins = dict.fromkeys(members, Login(PLATFORM_USER, INTENT_WRITER,
                                                       authorized_keys=(public_key_line(client_key),)))
    km_urls = {row.name: row.etsi014_url for row in device_rows if row.etsi014_url}
    deployments_dir, logs_dir = stack.deployments_dir, stack.logs_dir

    def program(name: str, level: str, config: pathlib.Path) -> Program:
        return Program(name, (sys.executable, "-m", "tools.cli", "run", level, "--config", str(config),
                              "--parent-pid", str(os.getpid())), ready=READY,
                       log_file=logs_dir / f"{name.replace('/', '-')}.log")

    programs = [p for p in stack.programs() if p.name not in DOMAIN_LEVELS]
    rows: dict[str, list] = {}
    borders: dict[str, tuple] = {}
    peering_rows: dict[str, dict] = {}
    for domain in members:
        part = topology.domain_part(domain)
        devices = _domain_devices(topology, domain)

        def retarget(peer: Peer, roles: set[str]) -> Peer | None:
            if peer.name in roles:
                return dataclasses.replace(peer, port=ports[domain][peer.name], host_key=public[(domain, peer.name)])
            return peer if peer.name in devices else None

        for level in DOMAIN_LEVELS:
            template = templates[level]
            roles = template.role_peers()
            peers = tuple(p for p in (retarget(peer, roles) for peer in template.peers) if p is not None)
            listen = Listen(DEFAULT_HOST, key_files[(domain, level)], ports[domain][level])
            deployment = dataclasses.replace(template, listen=listen, peers=peers,
                                             state_dir=state_dir / domain / level if template.state_dir else None)
            if level == "forwarding":
                deployment = dataclasses.replace(deployment, part=dataclasses.replace(
                    template.part, km_by_site={km.site: km.id for km in part.key_managers}))
            if level == "orchestrator":
                # it lets the platform (or its peering agent) write intents; with a platform, its
                # roaming intents reach the platform as the domain's service user
                roaming = () if peering else (Peer(PLATFORM, DEFAULT_HOST, ports[PLATFORM], service_user(domain),
                                                   password=passwords[service_user(domain)],
                                                   host_key=public[(PLATFORM, "")]),)
                deployment = dataclasses.replace(deployment, users=template.users + (platform_logins[domain],),
                                                 peers=peers + roaming, part=dataclasses.replace(
                                                     template.part, intent_store=state_dir / domain / level,
                                                     platform=None if peering else PLATFORM, member_id=domain))
            config = deployments_dir / domain / f"{level}.yaml"
            write_deployment(config, deployment)
            programs.append(program(f"{domain}/{level}", level, config))
        borders[domain] = border_links(topology, domain)
        login = templates["orchestrator"].peers[0]   # the levels' administrator, as the orchestrator logs in

        def peer(name: str, port: int, host_key: str) -> Peer:
            return Peer(name, DEFAULT_HOST, port, login.user, password=login.password, host_key=host_key)

        kms = {km.id for km in part.key_managers}
        key_managers = tuple(peer(row.name, row.port, row.host_key) for row in device_rows if row.name in kms)
        rows[domain] = [Level(level, f"{domain}/{level}", DEFAULT_HOST, ports[domain][level],
                              device_rows[0].read_write, device_rows[0].read_only, host_key=public[(domain, level)])
                        for level in DOMAIN_LEVELS]
        if peering:
            other = peering[1] if domain == peering[0] else peering[0]
            far = {km.id for km in topology.domain_part(other).key_managers}
            border_kms = {km: {k: url for k, url in urls.items() if k in far}
                          for km, urls in border_km_peers(topology, domain, km_urls).items()}
            admin, user = f"{domain}/{ADMIN}", f"{domain}/{service_user(domain)}"
            provider = Deployment(
                PEER_LEVEL, f"peer-{domain}", Listen(DEFAULT_HOST, key_files[(domain, PEER_LEVEL)],
                                                     ports[domain][PEER_LEVEL]),
                (Login(ADMIN, PLATFORM_ADMIN, password=passwords[admin]),
                 Login(service_user(domain), SERVICE_USER, password=passwords[user])),
                (Peer("peer", DEFAULT_HOST, ports[other][PEER_LEVEL], domain, private_key_file=member_keys[domain],
                      host_key=public[(other, PEER_LEVEL)]),
                 peer("forwarding", ports[domain]["forwarding"], public[(domain, "forwarding")]),
                 Peer("orchestrator", DEFAULT_HOST, ports[domain]["orchestrator"], PLATFORM_USER,
                      private_key_file=member_keys[domain], host_key=public[(domain, "orchestrator")]),
                 *key_managers),
                state_dir / domain / PEER_LEVEL,
                PeeringPart(domain, "peer", other, member_public[other], "forwarding", "orchestrator",
                            topology_file, border_key_managers={km: u for km, u in border_kms.items() if u}))
            config = deployments_dir / domain / f"{PEER_LEVEL}.yaml"
            write_deployment(config, provider)
            programs.append(program(f"{domain}/peer", PEER_LEVEL, config))
            peering_rows[domain] = {"host": DEFAULT_HOST, "port": ports[domain][PEER_LEVEL],
                                    "host_key": public[(domain, PEER_LEVEL)], "admin": [ADMIN, passwords[admin]],
                                    "service_user": [service_user(domain), passwords[user]]}
            continue
        agent = Deployment(AGENT, f"agent-{domain}", None, (), (
            Peer("platform", DEFAULT_HOST, ports[PLATFORM], "enrol", password=passwords["enrol"],
                 host_key=public[(PLATFORM, "")]),
            peer("forwarding", ports[domain]["forwarding"], public[(domain, "forwarding")]),
            peer("orchestrator", ports[domain]["orchestrator"], public[(domain, "orchestrator")]),
            *key_managers),
            state_dir / domain / "agent",
            FederationAgentPart(
                domain, member_keys[domain], "platform", "forwarding", "orchestrator",
                border_links=tuple(BorderLinkEntry(b.link_id, b.local_node, b.local_interface, b.peer_member,
                                                   b.peer_node) for b in borders[domain]),
                saes=tuple(SaeEntry(s.id, s.km) for s in part.saes),
                service_users=(service_user(domain),), visitors=True,
                border_key_managers=border_km_peers(topology, domain, km_urls)))
        config = deployments_dir / domain / "federation-agent.yaml"
        write_deployment(config, agent)
        programs.append(program(f"{domain}/agent", AGENT, config))
    if peering:
        return FederationPlan(stack, rows, {}, borders, programs, peering_rows)
    accounts = (Login(ADMIN, PLATFORM_ADMIN, password=passwords[ADMIN]),
                Login("enrol", ENROLMENT, password=passwords["enrol"]),
                *(Login(service_user(d), SERVICE_USER, password=passwords[service_user(d)]) for d in topology.domains))
    platform = Deployment(PLATFORM, PLATFORM, Listen(DEFAULT_HOST, key_files[(PLATFORM, "")], ports[PLATFORM]),
                          accounts, (), state_dir / "platform", FederationPart(
                              state_dir / "platform" / CLIENT_KEY_FILE,
                              tuple(PinnedMember(d, public[(d, "orchestrator")]) for d in topology.domains),
                              PLATFORM_USER))
    config = deployments_dir / f"{PLATFORM}.yaml"
    write_deployment(config, platform)
    programs.append(program(PLATFORM, PLATFORM, config))
    return FederationPlan(stack, rows, {
        "host": DEFAULT_HOST, "port": ports[PLATFORM], "host_key": public[(PLATFORM, "")],
        "admin": [ADMIN, passwords[ADMIN]], "enrol": ["enrol", passwords["enrol"]],
        "service_users": {d: [service_user(d), passwords[service_user(d)]] for d in topology.domains}},
        borders, programs)


def _check_peering(topology: Topology, pair: tuple[str, ...]) -> None:
    """Raise ValueError unless `pair` is two domains of `topology` joined by an inter-domain link."""
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f"give two different domains as A,B, got {','.join(pair)!r}")
    unknown = [d for d in pair if d not in topology.domains]
    if unknown:
        raise ValueError(f"no domain {unknown[0]!r} in topology {topology.name} "
                         f"(domains: {', '.join(topology.domains) or 'none'})")
    if not any({topology.domain_of(s.a.node), topology.domain_of(s.b.node)} == set(pair)
               for s in topology.inter_domain_spans()):
        raise ValueError(f"no inter-domain link joins {pair[0]} and {pair[1]} in topology {topology.name}")


def _domain_devices(topology: Topology, domain: str) -> set[str]:
    """The devices a domain's own levels manage: its view of the plant and its own devices."""
    from devices.host import PLANT_ID, device_builders, plant_of

    return {plant_of(domain)} | {d for d, _ in device_builders(topology.domain_part(domain), None) if d != PLANT_ID}


def _member_key_file(state_dir: pathlib.Path, domain: str, level_dir: str) -> pathlib.Path:
    """The domain's member key (made the first time), kept in the directory of the level that uses it."""
    from netconf_core import persistent_host_key
    from tools.federation_deploy import MEMBER_KEY_FILE

    path = state_dir / domain / level_dir / MEMBER_KEY_FILE
    persistent_host_key(path)
    return path


def _federation_ports(state_dir: pathlib.Path, domains: tuple[str, ...], plant: dict, levels: tuple[str, ...],
                      platform: bool = True) -> dict:
    """Each domain's `levels`' ports and the platform's: kept in FEDERATION_PORTS_FILE, free
    ones (none of the plant's) the first time."""
    from tools.federation_deploy import FEDERATION_PORTS_FILE, PLATFORM

    path = state_dir / FEDERATION_PORTS_FILE
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    wanted = [(d, level) for d in domains for level in levels
              if not isinstance((kept.get(d) or {}).get(level), int)]
    wanted += [] if not platform or isinstance(kept.get(PLATFORM), int) else [(PLATFORM, None)]
    taken = set(plant.get("levels", {}).values()) | {p for entry in plant.get("devices", {}).values()
                                                      for p in entry.values() if isinstance(p, int)}
    taken |= {p for d in domains for p in (kept.get(d) or {}).values() if isinstance(p, int)}
    for (where, level), port in zip(wanted, _free_ports(len(wanted), taken | {DEFAULT_ORCHESTRATOR_PORT})):
        if level is None:
            kept[where] = port
        else:
            kept.setdefault(where, {})[level] = port
    path.write_text(json.dumps(kept, indent=1))
    return kept


def _platform_passwords(state_dir: pathlib.Path, domains: tuple[str, ...], demo: bool,
                        peering: bool = False) -> dict[str, str]:
    """The platform's accounts' passwords (peering: each provider's agent's, as DOMAIN/ACCOUNT):
    kept (0600) and reused; with --demo-credentials each account's password is its name."""
    import secrets

    from tools.federation_deploy import ADMIN, FEDERATION_CREDENTIALS_FILE, service_user

    users = tuple(f"{d}/{u}" for d in domains for u in (ADMIN, service_user(d))) if peering else \
        (ADMIN, "enrol", *map(service_user, domains))
    if demo:
        return {u: u.rpartition("/")[2] for u in users}
    path = state_dir / FEDERATION_CREDENTIALS_FILE
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    passwords = {u: kept[u] if isinstance(kept.get(u), str) else secrets.token_urlsafe(12) for u in users}
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(passwords, out, indent=1)
    return passwords


class FederatedProcessStack(ProcessStack):
    """`qstrata up` of a topology with domains: a ProcessStack whose plan is the federation's
    (plan_federation), which federates once every process is ready. With `peering` (two
    domains), those two providers peer directly instead, with no platform."""

    def __init__(self, topology: Topology, topology_file: pathlib.Path | None = None,
                 state_dir: pathlib.Path | None = None, speed: float = 1.0, *,
                 peering: tuple[str, str] | None = None, **options):
        if len(topology.domains) < 2:
            raise ValueError(f"topology {topology.name} has {len(topology.domains)} domain(s): a federation needs two "
                             "or more")
        if peering is not None:
            _check_peering(topology, peering)
            if topology_file is None:
                raise ValueError("peering needs the topology as a file (each peering agent's deployment names it)")
        self.peering = peering
        super().__init__(topology, topology_file, state_dir, speed, 0, **options)

    def _plan(self, state: pathlib.Path) -> FederationPlan:
        return plan_federation(self.topology, self.topology_file, state, self.speed, self.demo_credentials,
                               self.insecure_sae_header, self.workers, self.peering)

    @property
    def agreement_id(self) -> str:
        """The peering's agreement (peering only)."""
        return "-".join(self.peering)

    async def start(self) -> None:
        """Start every process, then admit the domains, agree transit and wait until each
        member allows its service user (peering: the two providers agree); stop everything
        when that fails."""
        from tools.federation_deploy import ADMIN, POLL_S, agree_peering, federate, service_user, service_users_allowed

        await super().start()
        try:
            if self.peering:
                sessions = [await self.connect_peer(d) for d in self.peering]
                try:
                    await agree_peering(*sessions, self.agreement_id, self.ready_timeout)
                finally:
                    for nc in sessions:
                        nc.close()
                return
            async with await self.connect(ADMIN) as admin:
                await federate(admin, self.plan.borders, self.ready_timeout)
                users = {d: service_user(d) for d in self.topology.domains}
                try:
                    async with asyncio.timeout(self.ready_timeout):
                        while not await service_users_allowed(admin, users):
                            await asyncio.sleep(POLL_S)
                except TimeoutError:
                    raise TimeoutError(f"the members did not allow their service users {', '.join(users.values())} "
                                       f"within {self.ready_timeout:g} s") from None
        except BaseException:
            await self.stop()
            raise

    async def connect_peer(self, domain: str, account: str = "admin"):
        """A NETCONF session to a provider's peering agent as one of its accounts (admin, users-DOMAIN)."""
        from netconf_core import NetconfClient, trusted_host_keys

        p = self.plan.peering[domain]
        user, password = p["admin"] if account == "admin" else p["service_user"]
        return await NetconfClient.connect(p["host"], p["port"], user, password=password,
                                           known_hosts=trusted_host_keys(p["host_key"]), timeout=20)

    async def connect(self, account: str):
        """A NETCONF session to the platform as one of its accounts (admin, enrol, users-DOMAIN)."""
        from netconf_core import NetconfClient, trusted_host_keys

        p = self.plan.platform
        user, password = p["admin"] if account == "admin" else p["enrol"] if account == "enrol" else \
            next(pair for pair in p["service_users"].values() if pair[0] == account)
        return await NetconfClient.connect(p["host"], p["port"], user, password=password,
                                           known_hosts=trusted_host_keys(p["host_key"]), timeout=20)

    def state(self) -> dict:
        """What `qstrata-stack.json` holds of the federation besides the plant's devices
        (`levels`): each domain's levels, and the platform."""
        plan = self.plan
        domains = {d: [dataclasses.asdict(r) for r in rows] for d, rows in plan.domains.items()}
        return {"domains": domains, "peering": plan.peering} if self.peering else \
            {"domains": domains, "federation": plan.platform}

    def report(self) -> str:
        """Each domain's levels and the platform with its accounts, as `up` prints them."""
        plan = self.plan
        parts = [format_levels(plan.rows)]
        for domain, rows in plan.domains.items():
            parts.append(f"domain {domain}:\n{format_levels(rows)}")
        for domain, p in plan.peering.items():
            parts.append(f"peering agent of {domain}: {p['host']}:{p['port']}, accounts "
                         f"{'/'.join(p['admin'])}, {'/'.join(p['service_user'])}; host key {p['host_key']}")
        if self.peering:
            return "\n\n".join(parts)
        p = plan.platform
        accounts = ", ".join("/".join(pair) for pair in (p["admin"], p["enrol"], *p["service_users"].values()))
        parts.append(f"federation platform: {p['host']}:{p['port']}, accounts {accounts}; host key {p['host_key']}")
        return "\n\n".join(parts)


async def _run_federation(topology: Topology, args) -> int:
    """`qstrata up` of a topology with domains."""
    from tools.federation_deploy import DOMAIN_LEVELS

    stack = FederatedProcessStack(topology, args.topology.absolute() if args.topology else None, args.state_dir,
                                  args.speed, demo_credentials=args.demo_credentials,
                                  insecure_sae_header=args.insecure_sae_header,
                                  say=lambda line: print(line, flush=True), workers=getattr(args, "workers", None),
                                  peering=getattr(args, "peering", None))
    stopped = asyncio.get_running_loop().create_task(until_stopped())
    state_file = pathlib.Path.cwd() / STATE_FILE
    wrote = False
    try:
        if stack.peering:
            print(f"starting peering {' and '.join(stack.peering)} of {topology.name}: each with "
                  f"{len(DOMAIN_LEVELS)} levels and a peering agent, the plant's devices, no platform ...", flush=True)
        else:
            print(f"starting federation {topology.name}: domains {', '.join(topology.domains)}, each with "
                  f"{len(DOMAIN_LEVELS)} levels and an agent, the plant's devices and the platform ...", flush=True)
        status = await _start(stack, stopped, "federation")
        if status is not None:
            return status
        print(stack.report(), flush=True)
        write_state(state_file, topology.name, stack.plan.rows, **stack.state())
        wrote = True
        done = f"{' and '.join(stack.peering)} peered under agreement {stack.agreement_id}" if stack.peering else \
            "every domain admitted, transit agreed between neighbours"
        print(f"\n{topology.name}: {len(stack.plan.processes)} processes on 127.0.0.1; {done}. "
              f"Deployments in {stack.plan.stack.deployments_dir}, "
              f"logs in {stack.plan.stack.logs_dir}. Wrote {STATE_FILE} (`qstrata intent --domain D`).",
              flush=True)
        print("Ctrl-C stops.", flush=True)
        await stopped
    finally:
        stopped.cancel()
        if wrote:
            state_file.unlink(missing_ok=True)
        await stack.stop()
    print("stopped", flush=True)
    return 0
