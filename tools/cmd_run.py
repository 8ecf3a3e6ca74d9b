"""`qstrata run LEVEL --config FILE`: run one level alone (twin, devices, connectivity,
forwarding, service, fabric, entanglement, orchestrator, federation, federation-agent or federation-peer) from
its deployment file (docs/deployment.md) until SIGTERM or Ctrl-C. `twin` is a network's twin service
(docs/twin-service.md), which the
devices of that network, in one process or several, share.

The level needs nothing but the file and the network: it listens where the file says, lets in
the users it lists, and reaches its peers (devices, or the controllers below it) over NETCONF,
each host key pinned, so the peers may be real ETSI 015 nodes, switches and key managers as
well as another `qstrata run`. A line `qstrata run LEVEL: NAME ready on ADDRESS:PORT` is
printed once it serves (a controller: once it has read its devices, or after a minute with a
warning naming those it could not reach). A bad file exits with status 1 and every problem,
as FILE: KEY.PATH: what is wrong.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import pathlib
import signal
import sys

from tools.deployment import (CONTROLLERS, ENTANGLEMENT_LEVELS, FEDERATION_LEVELS, INTENT_WRITER, LEVELS,
                              READ_ONLY, READ_WRITE, Deployment, DeploymentError, endpoint, host_key, load_deployment,
                              netconf_users, secret)
from tools.running import until_stopped

READY = "ready on"
SYNC_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1
# a listener, a few sessions, its datastore and key store files, ETSI 014 and KM-to-KM sockets
DESCRIPTORS_PER_DEVICE = 8
log = logging.getLogger("qstrata.run")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run one level alone from its deployment file",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", choices=LEVELS)
    parser.add_argument("--config", type=pathlib.Path, required=True, metavar="FILE",
                        help="the level's deployment file (YAML, docs/deployment.md)")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="what is logged to stderr (default WARNING)")
    parser.add_argument("--parent-pid", type=int, metavar="PID",
                        help="exit when process PID (a supervisor) ends (Linux)")
    parser.add_argument("--parent-signal", choices=("TERM", "KILL"), default="TERM",
                        help="how it ends when PID ends: TERM, a clean stop (default); KILL, as in a crash (the "
                             "workers of a devices level: they die with it)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        deployment = load_deployment(args.config)
    except DeploymentError as error:
        print(f"qstrata run {args.level}: {error}", file=sys.stderr)
        return 1
    if deployment.level != args.level:
        print(f"qstrata run {args.level}: {args.config}: level: the file deploys the {deployment.level} level, "
              f"not {args.level}", file=sys.stderr)
        return 1
    if args.parent_pid is not None and not _exit_with(args.parent_pid, signal.Signals[f"SIG{args.parent_signal}"]):
        return 1
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s {args.level} %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(deployment))
    except (OSError, ValueError) as error:  # a port in use, an unreadable state directory, a bad topology
        print(f"qstrata run {args.level}: {error}", file=sys.stderr)
        return 1


def _exit_with(parent: int, death_signal: signal.Signals = signal.SIGTERM) -> bool:
    """Be sent `death_signal` when the parent ends (so that a supervisor killed with SIGKILL
    leaves no level behind); False when it has already ended."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, death_signal)
    return os.getppid() == parent


async def serve(deployment: Deployment) -> int:
    stopped = asyncio.get_running_loop().create_task(until_stopped())  # a signal during start stops too
    await asyncio.sleep(0)
    level = build(deployment)
    await level.start()   # a level that cannot start stops what it started
    settling = asyncio.get_running_loop().create_task(_settle(deployment, level))
    try:
        await asyncio.wait({settling, stopped}, return_when=asyncio.FIRST_COMPLETED)   # a signal ends the wait
        if not stopped.done():
            if deployment.level == "devices":
                from tools.device_table import format_table

                print(format_table(level.table()), flush=True)
            print(f"qstrata run {deployment.level}: {deployment.name} {READY} {_where(deployment, level)}",
                  flush=True)
            failed = getattr(level, "failed", None)   # a level of several processes: one died
            await asyncio.wait({stopped, failed} - {None}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        settling.cancel()
        stopped.cancel()
        await level.stop()
    if getattr(level, "failed", None) is not None and level.failed.done():
        print(f"qstrata run {deployment.level}: {deployment.name}: {level.failed.result()}; stopped the others",
              file=sys.stderr, flush=True)
        return 1
    print(f"qstrata run {deployment.level}: {deployment.name} stopped", flush=True)
    return 0


def build(d: Deployment):
    """The level's object (start/stop), as the deployment describes it."""
    if d.level == "twin":
        return _twin_service(d)
    if d.level == "federation-peer":
        from tools.peering_deploy import peer_level

        return peer_level(d)
    if d.level in FEDERATION_LEVELS:
        from tools.federation_deploy import agent_level, platform_level

        return platform_level(d) if d.level == "federation" else agent_level(d)
    users = netconf_users(d)
    access = {"read_write": d.access(READ_WRITE), "read_only": d.access(READ_ONLY)}
    key = host_key(d)
    if d.level == "devices":
        return _device_host(d, users, access, key)
    common = dict(users=users, host=d.listen.address, port=d.listen.port, host_key=key, **access)
    devices = [endpoint(p) for p in d.device_peers()]
    part = d.part
    if d.level == "connectivity":
        from controller.connectivity import ConnectivityController

        return ConnectivityController(d.name, devices, state_dir=d.state_dir, **common)
    if d.level == "forwarding":
        from controller.forwarding import ForwardingController

        return ForwardingController(d.name, devices, endpoint(d.peer(part.connectivity)), km_by_site=part.km_by_site,
                                    state_dir=d.state_dir, **common)
    if d.level == "service":
        from controller.service import ServiceController

        return ServiceController(d.name, devices, endpoint(d.peer(part.forwarding)), state_dir=d.state_dir,
                                 connectivity=endpoint(d.peer(part.connectivity)) if part.connectivity else None,
                                 **common)
    if d.level in ENTANGLEMENT_LEVELS:
        from tools.entanglement_deploy import entanglement_level

        return entanglement_level(d, devices, common)
    from orchestrator.intents import Orchestrator

    strata = [endpoint(d.peer(name)) for name in (part.service, part.forwarding, part.connectivity)]
    return Orchestrator(d.name, *strata, store_dir=part.intent_store, intent_writers=d.access(INTENT_WRITER),
                        entanglement=endpoint(d.peer(part.entanglement)) if part.entanglement else None,
                        federation=endpoint(d.peer(part.platform)) if part.platform else None,
                        federation_member=part.member_id, **common)


def _twin_service(d: Deployment):
    import random

    from devices.host import key_manager_sites
    from devices.topology import build_twin, default_topology, load_topology
    from devices.twin import Clock
    from devices.twin_service import TwinService

    part = d.part
    topology = load_topology(part.topology) if part.topology else default_topology()
    return TwinService(build_twin(topology, Clock(part.speed), random.Random(part.seed)),
                       secret(part.token, part.token_file), d.listen.address, d.listen.port,
                       key_manager_sites(topology), name=d.name)


def _device_host(d: Deployment, users: dict, access: dict, key):
    from devices.etsi014 import server_ssl_context
    from devices.host import DeviceHost
    from devices.km_peer import client_ssl_context
    from devices.topology import default_topology, load_topology

    part = d.part
    etsi = part.etsi014
    topology = load_topology(part.topology) if part.topology else default_topology()
    workers = _device_workers(d, topology)
    if workers is not None:
        return workers
    ports = {device: {"port": p.netconf, **({"etsi014_port": p.etsi014} if p.etsi014 is not None else {})}
             for device, p in part.ports.items()}

    def tls(km_id: str):
        files = etsi.key_managers[km_id]
        return server_ssl_context(str(files.cert_file), str(files.key_file), str(etsi.ca_file))

    def peer_tls(km_id: str):   # the same certificate, presented to the key manager's peers
        files = etsi.key_managers[km_id]
        return client_ssl_context(str(files.cert_file), str(files.key_file), str(etsi.ca_file))

    twin = None
    if part.twin is not None:
        from devices.twin_service import TwinAddress

        twin = TwinAddress(part.twin.address, part.twin.port, secret(part.twin.token, part.twin.token_file))
    from netconf_core.ssh import raise_descriptor_limit

    devices = len(part.run) if part.run else len(topology.qkd_nodes) + len(topology.key_managers) + \
        len(topology.switches) + len(topology.quantum_nodes) + 1  # the fibre plant
    wanted = DESCRIPTORS_PER_DEVICE * devices + 1024
    if (limit := raise_descriptor_limit(wanted)) < wanted:
        log.warning("%d devices may need %d descriptors, and this process may open %d: sessions will be refused "
                    "when they run out; spread the devices over more workers (devices.workers)", devices, wanted,
                    limit)
    return DeviceHost(topology, state_dir=d.state_dir, speed=part.speed, ports=ports, users=users,
                      twin=twin, run=set(part.run) or None, restconf=part.restconf,
                      host=d.listen.address, host_key=key, etsi014_tls=None if etsi.insecure_http else tls,
                      km_peer_tls=None if etsi.insecure_http else peer_tls,
                      insecure_sae_header=etsi.insecure_http, **access)


def _device_workers(d: Deployment, topology):
    """The devices over `devices.workers` processes (default: one per core), with the twin
    service they share unless devices.twin names the network's (tools/device_workers.py); None
    when one process runs them all."""
    import secrets

    from devices.host import device_builders
    from tools.deployment import Listen, TwinPart
    from tools.device_workers import DeviceWorkers

    part = d.part
    devices = [device for device, _ in device_builders(topology, None) if not part.run or device in part.run]
    count = min(part.workers or os.cpu_count() or 1, len(devices))
    if count <= 1:
        return None
    twin = None if part.twin is not None else _twin_service(Deployment(
        "twin", f"{d.name}-twin", Listen("127.0.0.1", None, 0), (),
        part=TwinPart(part.topology, part.speed, token=secrets.token_urlsafe(32))))
    return DeviceWorkers(d, topology, devices, count, twin, ready=READY)


async def _settle(d: Deployment, level) -> None:
    """Wait (bounded) until a controller has read its devices, the orchestrator reached its
    controllers; say which are missing when they are not there in time."""
    synced = CONTROLLERS + ENTANGLEMENT_LEVELS + ("federation-agent", "federation-peer")
    wait = getattr(level, "wait_synced", None) if d.level in synced else (
        level.wait_connected if d.level == "orchestrator" else None)
    if wait is None:
        return
    try:
        await wait(SYNC_TIMEOUT_S)
    except TimeoutError:
        links = dict(getattr(level, "links", {}))
        links.update(getattr(level, "strata", {}))
        for extra in ("connectivity", "forwarding", "fabric"):
            link = getattr(level, extra, None)
            if hasattr(link, "connected"):
                links[extra] = link
        missing = [f"{name} ({link.reason or link.status})" for name, link in links.items()
                   if not link.connected.is_set()]
        log.warning("%s: not in sync after %.0f s; unreachable: %s (it keeps trying)", d.name, SYNC_TIMEOUT_S,
                    ", ".join(missing) or "none")


def _where(d: Deployment, level) -> str:
    if d.level == "federation-agent":
        from tools.federation_deploy import agent_where

        return agent_where(d)
    if d.level == "devices":
        return f"{d.listen.address} ({len(level.devices)} devices)"
    return f"{d.listen.address}:{level.port}"
