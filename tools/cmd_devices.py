"""`qstrata devices up [TOPOLOGY]`: run every device of a topology until Ctrl-C or SIGTERM,
each on its own port of 127.0.0.1, spread over --workers processes (default: one per core; 1:
all in this one). It runs the devices level of `qstrata run devices` (tools/cmd_run.py), from
a deployment it writes: its users, host key and certificates are kept in --state-dir."""
from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
import tempfile

from devices.base import ADMIN_USER, MONITOR_USER
from devices.topology import Topology
from tools.device_table import format_table, parse_table  # noqa: F401  (the table's home; named here too)
from tools.running import topology_argument, until_stopped


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("devices", help="run emulated devices", description=__doc__)
    commands = parser.add_subparsers(dest="devices_command", required=True)
    up = commands.add_parser("up", help="start every device of a topology and print who listens where")
    up.add_argument("topology", nargs="?", type=pathlib.Path,
                    help="topology file (default: the embedded Madrid network)")
    up.add_argument("--speed", type=float, default=1.0, help="emulated seconds per real second (default 1)")
    up.add_argument("--state-dir", type=pathlib.Path,
                    help="keep datastores, key pools, host key, credentials and certificates here across runs "
                         "(default: a temporary directory)")
    up.add_argument("--restconf", action="store_true",
                    help="every QKD node serves RESTCONF (ETSI GS QKD 015) too, on a port of its own")
    add_workers_option(up)
    from tools.stack import add_security_options

    add_security_options(up)
    up.set_defaults(func=_up)


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, metavar="N",
                        help=f"processes to spread the devices over (default: one per core, here {os.cpu_count()}; "
                             f"1: every device in one process)")


def workers_argument(workers: int | None, command: str) -> bool:
    """Whether --workers is good; if not, say why."""
    if workers is not None and workers < 1:
        print(f"qstrata {command}: --workers must be >= 1, got {workers}", file=sys.stderr)
        return False
    return True


def _up(args: argparse.Namespace) -> int:
    topology = topology_argument(args.topology, args.speed, "devices up")
    if isinstance(topology, int):
        return topology
    if not workers_argument(args.workers, "devices up"):
        return 2
    try:
        return asyncio.run(_run(topology, args.topology.absolute() if args.topology else None, args.state_dir,
                                args.speed, args.demo_credentials, args.insecure_sae_header, args.restconf,
                                args.workers))
    except (OSError, ValueError) as error:  # a port, the state directory, a worker that could not start
        print(f"qstrata devices up: {error}", file=sys.stderr)
        return 1


async def _run(topology: Topology, topology_file: pathlib.Path | None, state_dir: pathlib.Path | None, speed: float,
               demo_credentials: bool = False, insecure_sae_header: bool = False, restconf: bool = False,
               workers: int | None = None) -> int:
    from netconf_core import persistent_host_key, public_key_line
    from netconf_core.server import HOST_KEY_FILE
    from tools.cmd_run import build  # imported here: it loads asyncssh, libyang and aiohttp
    from tools.deployment import DevicesPart, Deployment, Listen
    from tools.stack import PKI_DIR, KeyDeliveryPki, demo_passwords, stack_passwords

    pki = None if insecure_sae_header else KeyDeliveryPki(state_dir / PKI_DIR if state_dir else None)
    passwords = demo_passwords(demo_credentials) or stack_passwords(state_dir)
    scratch = tempfile.TemporaryDirectory(prefix="qstrata-devices-up-")
    try:
        key_file = (state_dir or pathlib.Path(scratch.name)) / HOST_KEY_FILE
        public_key = public_key_line(persistent_host_key(key_file))   # kept in the state directory (0600)
        deployment = Deployment("devices", "devices", Listen("127.0.0.1", key_file), stack_logins(passwords), (),
                                state_dir, DevicesPart(etsi014_section(pki, topology), topology_file, speed,
                                                       workers=workers, restconf=restconf))
        level = build(deployment)
        await level.start()
        try:
            print(format_table(level.table()))
            print(f"\nSSH host key of every device: {public_key}")
            if pki is not None:
                print(f"ETSI 014 over HTTPS: CA {pki.ca.ca_file}; each SAE's certificate is <SAE_ID>.pem and .key "
                      f"beside it")
                for sae in topology.saes:
                    pki.sae(sae.id)
            processes = len(level.pids()) if hasattr(level, "pids") else 1
            print(f"\nnetwork {topology.name}: {len(level.devices)} devices in {processes} "
                  f"process{'es' if processes > 1 else ''}, clock speed {speed}; NETCONF users "
                  f"{ADMIN_USER}/{passwords[ADMIN_USER]} (read-write), "
                  f"{MONITOR_USER}/{passwords[MONITOR_USER]} (read-only); Ctrl-C stops", flush=True)
            failed = getattr(level, "failed", None)   # a worker died: the devices it ran are gone
            stopped = asyncio.ensure_future(until_stopped())
            await asyncio.wait({stopped, failed} - {None}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        finally:
            await level.stop()
    finally:
        scratch.cleanup()
        if pki is not None:
            pki.cleanup()
    if failed is not None and failed.done():
        print(f"qstrata devices up: {failed.result()}; stopped the others", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0


def stack_logins(passwords: dict[str, str]) -> tuple:
    """The deployment's users: admin (read-write) and monitor (read-only), with their passwords."""
    from tools.deployment import READ_ONLY, READ_WRITE, Login

    return (Login(ADMIN_USER, READ_WRITE, password=passwords[ADMIN_USER]),
            Login(MONITOR_USER, READ_ONLY, password=passwords[MONITOR_USER]))


def etsi014_section(pki, topology: Topology):
    """How the key managers serve ETSI 014 (tools.deployment.Etsi014): with a certificate each
    from the stack's `pki`, or plain HTTP when it is None."""
    from devices.host import device_builders
    from devices.key_manager import KeyManagerDevice
    from tools.deployment import Etsi014, KeyManagerTls

    if pki is None:
        return Etsi014(insecure_http=True)
    managers = [d for d, build in device_builders(topology, None) if issubclass(build.func, KeyManagerDevice)]
    credentials = {km: pki.km(km) for km in managers}
    return Etsi014(False, pki.ca.ca_file, {km: KeyManagerTls(c.cert_file, c.key_file) for km, c in credentials.items()})
