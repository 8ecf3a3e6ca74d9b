"""How the forwarding controller follows its QKD nodes' link state: by its on-change YANG-Push
subscriptions (the default) or by polling at its resync, side by side in one run.

    qstrata bench follow [--trials 6] [--resync 10] [--idle 20]

On the Madrid devices (one DeviceHost), a connectivity controller and a forwarding controller
with the PHYS link qkd-quintin - qkd-distrito ACTIVE: a weak eavesdropper is attached to (or
removed from) a span of the link's optical path at the plant, which moves the link's QBER a
little, below every threshold (no node notifies it), and the time runs until the controller
serves the new QBER north. Before that, over `--idle` seconds of steady state (only the skr
jitter moves): the RPCs the two QKD nodes answered per minute (those of this benchmark's
counting included, the same in both modes), and the CPU of the process, which runs the
devices and both controllers (a YANG-Push node takes snapshots of what is subscribed).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from models.ns import ETSI_TYPES, FIBRE_PLANT, FORWARDING, NT, NW
from netconf_core.ns import MONITORING as MONITORING_NS

QKDL = "00000000-0000-4000-8000-0000000000f1"
SPAN = "quintin-concepcion"
EAVESDROPPED = 0.004  # QBER + about 0.1 %


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=6, help="eavesdropper toggles per mode (default 6)")
    p.add_argument("--resync", type=float, default=10.0, help="the controllers' resync period, s (default 10)")
    p.add_argument("--idle", type=float, default=20.0,
                   help="seconds of steady state over which the cost is counted (default 20)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = {}
    for mode in ("push", "poll"):
        rows[mode] = asyncio.run(measure(mode, args.trials, args.resync, args.idle))
    print(f"forwarding controller following 2 QKD nodes, resync every {args.resync:g} s, {args.trials} trials each")
    print(f"{'':40}{'push (on-change)':>18}{'poll (resync)':>16}")
    for label, key, unit in (("QBER change -> served north, p50", "p50", "s"),
                             ("QBER change -> served north, max", "max", "s"),
                             ("RPCs the nodes answered per minute", "rpm", ""),
                             ("CPU per minute (devices + controllers)", "cpu", "s")):
        cells = [f"{rows[m][key]:.2f}{' ' + unit if unit else ''}" for m in ("push", "poll")]
        print(f"{label:40}{cells[0]:>18}{cells[1]:>16}")
    return 0


async def measure(mode: str, trials: int, resync: float, idle: float) -> dict[str, float]:
    from controller.connectivity import ConnectivityController
    from controller.forwarding import ForwardingController
    from devices.host import DeviceHost
    from devices.topology import default_topology
    from netconf_core import Endpoint, NetconfClient, User

    users = {"admin": User(password="admin"), "monitor": User(password="monitor")}
    topology = default_topology()
    host = DeviceHost(topology, seed=1, insecure_sae_header=True)
    await host.start()
    rows = {row.id: row for row in host.table()}
    ends = {row.id: Endpoint(row.id, row.host, row.port, "admin", "admin", host_key=row.host_key)
            for row in rows.values()}
    fibre = [ends[r.id] for r in rows.values() if r.kind in ("fibre-plant", "optical-switch")]
    nodes = [ends[r.id] for r in rows.values() if r.kind == "qkd-node"]
    connectivity = ConnectivityController("connectivity", fibre, users, resync_period=3600)
    await connectivity.start()
    extra = {} if mode == "push" else {"watches": ()}
    forwarding = ForwardingController(
        "forwarding", nodes, Endpoint("connectivity", "127.0.0.1", connectivity.port, "admin", "admin",
                                      host_key=connectivity.server.public_host_key), users,
        km_by_site={km.site: km.id for km in topology.key_managers}, resync_period=resync, **extra)
    await forwarding.start()

    async def client(port: int) -> NetconfClient:
        return await NetconfClient.connect("127.0.0.1", port, "admin", password="admin")

    async def qber() -> str | None:
        async with await client(forwarding.port) as nc:
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"><network><network-id>qkd</network-id>'
                                                   f'<link xmlns="{NT}"><link-id>q-d</link-id></link></network>'
                                                   f'</networks>'))
        return data.findtext(f".//{{{FORWARDING}}}qkd-link/{{{FORWARDING}}}qber")

    async def rpcs() -> int:
        total = 0
        for name in ("qkd-quintin", "qkd-distrito"):
            async with await client(rows[name].port) as nc:
                data = await nc.get(filter=("subtree", f'<netconf-state xmlns="{MONITORING_NS}"><statistics/>'
                                                       f'</netconf-state>'))
            total += int(data.findtext(f".//{{{MONITORING_NS}}}in-rpcs"))
        return total

    try:
        await connectivity.wait_synced()
        await forwarding.wait_synced()
        async with await client(forwarding.port) as nc:
            await nc.edit_config(
                f'<networks xmlns="{NW}" xmlns:t="{ETSI_TYPES}"><network><network-id>qkd</network-id>'
                f'<link xmlns="{NT}"><link-id>q-d</link-id>'
                f'<source><source-node>qkd-quintin</source-node><source-tp>1</source-tp></source>'
                f'<destination><dest-node>qkd-distrito</dest-node><dest-tp>2</dest-tp></destination>'
                f'<qkd-link xmlns="{FORWARDING}"><qkdl-id>{QKDL}</qkdl-id><link-type>t:PHYS</link-type></qkd-link>'
                f'</link></network></networks>', target="candidate")
            await nc.commit()
        async with asyncio.timeout(60):
            while await qber() is None:
                await asyncio.sleep(0.1)
        # Steady state: what following the two nodes costs while nothing but the skr jitter moves.
        start_rpcs, start_cpu = await rpcs(), time.process_time()
        await asyncio.sleep(idle)
        minutes = idle / 60
        cost = {"rpm": (await rpcs() - start_rpcs) / minutes, "cpu": (time.process_time() - start_cpu) / minutes}
        latencies = []
        async with await client(rows["fibre-plant"].port) as plant:
            for trial in range(trials):
                before = await qber()
                operation = (f'<attach-eavesdropper xmlns="{FIBRE_PLANT}"><span-id>{SPAN}</span-id>'
                             f'<fraction>{EAVESDROPPED}</fraction></attach-eavesdropper>' if trial % 2 == 0 else
                             f'<remove-eavesdropper xmlns="{FIBRE_PLANT}"><span-id>{SPAN}</span-id></remove-eavesdropper>')
                sent = time.monotonic()
                await plant.dispatch(operation)
                async with asyncio.timeout(3 * resync + 30):
                    while abs(float(await qber() or 0) - float(before or 0)) < 0.05:
                        await asyncio.sleep(0.05)
                latencies.append(time.monotonic() - sent)
        return {"p50": statistics.median(latencies), "max": max(latencies), **cost}
    finally:
        await forwarding.stop()
        await connectivity.stop()
        await host.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qstrata bench follow", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.func(args)
