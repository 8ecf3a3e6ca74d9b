"""`qstrata devices up [TOPOLOGY]`: run every device of a topology in this process until
Ctrl-C or SIGTERM, each on its own port of 127.0.0.1."""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys

from devices.base import ADMIN_USER, MONITOR_USER
from devices.topology import Topology
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
    from tools.stack import add_security_options

    add_security_options(up)
    up.set_defaults(func=_up)


def _up(args: argparse.Namespace) -> int:
    topology = topology_argument(args.topology, args.speed, "devices up")
    if isinstance(topology, int):
        return topology
    try:
        return asyncio.run(_run(topology, args.state_dir, args.speed, args.demo_credentials,
                                args.insecure_sae_header, args.restconf))
    except OSError as error:  # a port or the state directory
        print(f"qstrata devices up: {error}", file=sys.stderr)
        return 1


async def _run(topology: Topology, state_dir: pathlib.Path | None, speed: float, demo_credentials: bool = False,
               insecure_sae_header: bool = False, restconf: bool = False) -> int:
    from devices.base import network_users
    from devices.host import DeviceHost  # imported here: it loads asyncssh, libyang and aiohttp
    from tools.stack import PKI_DIR, KeyDeliveryPki, demo_passwords, stack_passwords

    pki = None if insecure_sae_header else KeyDeliveryPki(state_dir / PKI_DIR if state_dir else None)
    passwords = demo_passwords(demo_credentials) or stack_passwords(state_dir)
    host = DeviceHost(topology, state_dir=state_dir, speed=speed,
                      users=network_users(passwords), etsi014_tls=pki.server_tls if pki else None,
                      km_peer_tls=pki.km_peer_tls if pki else None,
                      insecure_sae_header=insecure_sae_header, restconf=restconf)
    users = host.network.users
    async with host:
        print(format_table(host.table()))
        print(f"\nSSH host key of every device: {host.public_host_key}")
        if pki is not None:
            print(f"ETSI 014 over HTTPS: CA {pki.ca.ca_file}; each SAE's certificate is <SAE_ID>.pem and .key "
                  f"beside it")
            for sae in topology.saes:
                pki.sae(sae.id)
        print(f"\nnetwork {topology.name}: {len(host.devices)} devices, clock speed {speed}; NETCONF users "
              f"{ADMIN_USER}/{users[ADMIN_USER].password} (read-write), "
              f"{MONITOR_USER}/{users[MONITOR_USER].password} (read-only); Ctrl-C stops", flush=True)
        try:
            await until_stopped()
        finally:
            if pki is not None:
                pki.cleanup()
    print("stopped", flush=True)
    return 0


def format_table(rows: list) -> str:
    """The rows of `DeviceHost.table()` as aligned text."""
    restconf = any(r.restconf_url for r in rows)  # a RESTCONF column when the QKD nodes serve it
    header = ("DEVICE", "KIND", "NETCONF", "MODULES", "ETSI 014") + (("RESTCONF",) if restconf else ())
    lines = [(r.id, r.kind, f"{r.host}:{r.port}", " ".join(r.modules), r.etsi014_url or "-")
             + ((r.restconf_url or "-",) if restconf else ()) for r in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header] + lines)
