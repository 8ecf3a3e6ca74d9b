"""Benchmark of re-routes across a federation (`qstrata bench federation`): on the federated
stack of devices/topologies/federation.yaml (domains A, B, C, D, each its own controllers,
orchestrator and agent, and the platform; all NETCONF and ETSI 014 on 127.0.0.1), a service
from sae-a (A) to sae-c (C), and per trial one re-route trigger:

- cut: the fibre of the inter-domain link the service leaves A by is cut (the platform moves
  it through the other middle domain); the span is repaired once keys flow again;
- move: sae-c moves between C's km-c3 and D's km-d2 (attached at both, `move-sae` by the
  member that serves it next), alternately.

Measured from the trigger: `route`, until the platform shows the service active on its new
route; `keys`, until keys flow on it: an enc_keys at km-a1 then dec_keys at the destination
SAE's key manager (asked again and again from the trigger on, as applications would) return the
same keys, and the new route's last border key manager (one the old route does not use) has
counted keys for the pair since the trigger. Printed per trigger:
p50 and max over --trials.

    .venv/bin/python -m tools.bench_federation [--trials 3] [--timeout 60]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from models.ns import FIBRE_PLANT

SERVICE, RATE = "bench-a-c", 10000
SOURCE, DESTINATION = ("sae-a", "A"), ("sae-c", "C")
MOVES = (("D", "km-d2"), ("C", "km-c3"))  # where sae-c moves on odd and even trials
POLL_S = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=3, help="re-routes of each kind (default 3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one re-route may take (default 60)")
    parser.set_defaults(func=run)


class Bench:
    def __init__(self, fed, timeout: float):
        from aiohttp import ClientSession

        self.fed = fed
        self.timeout = timeout
        self.http = ClientSession()
        self.urls = {row.id: row.etsi014_url for row in fed.host.table()}
        topology = fed.topology
        km_of_site = {km.site: km.id for km in topology.key_managers}
        self.km_of_node = {n.id: km_of_site.get(n.site) for n in topology.qkd_nodes}
        self.site_of_node = {n.id: n.site for n in topology.qkd_nodes}
        self.spans = topology.inter_domain_spans()
        self.destination_km = "km-c3"
        self.refused = ""  # why the last exchange got no keys

    async def close(self) -> None:
        await self.http.close()

    async def service(self, admin):
        from models.federation import read_service_statuses
        from models.ns import FEDERATION

        data = await admin.get(("subtree", f'<federation xmlns="{FEDERATION}"><services/></federation>'))
        return read_service_statuses(data).get(SERVICE)

    async def counted(self, km: str, counter: str) -> int:
        """Keys a key manager counted for the service's pair (relay-statistics `counter`)."""
        from models.key_manager import COUNTERS_FILTER, KmCounters

        row = next(r for r in self.fed.host.table() if r.id == km)
        domain = self.fed.topology.domain_of(next(k.site for k in self.fed.topology.key_managers if k.id == km))
        async with await self.fed.stacks[domain].endpoint(km, row.port, row.host_key).connect() as nc:
            counters = KmCounters.parse(await nc.get(("subtree", COUNTERS_FILTER)))
        return getattr(counters, counter).get((SOURCE[0], DESTINATION[0]), (0, 0))[0]

    async def counters(self) -> dict[tuple[str, str], int]:
        """What every key manager counted for the pair, both counters."""
        kms = sorted({km for km in self.km_of_node.values() if km})
        found = await asyncio.gather(*(self.counted(km, c) for km in kms for c in ("forwarded", "received")))
        return dict(zip(((km, c) for km in kms for c in ("forwarded", "received")), found))

    async def exchange(self) -> bool:
        """One enc_keys at km-a1 and dec_keys at the destination SAE's key manager: True when
        both return the same keys; False when either has none (yet)."""
        from tools.demo_steps import StepFailed, exchange_keys

        try:
            ids, same = await exchange_keys(self.http, (self.urls["km-a1"], SOURCE[0]),
                                            (self.urls[self.destination_km], DESTINATION[0]), number=1,
                                            timeout=0, tls=self.fed.sae_ssl)
        except StepFailed as failed:
            self.refused = str(failed)
            return False
        if not same:
            raise AssertionError("the two ends got different keys")
        return bool(ids)

    async def measure(self, admin, trigger, old_route: tuple[str, ...], moved_to: str | None = None) -> tuple:
        """(route, keys) seconds from `trigger()` (see the module docstring)."""
        before = await self.counters()
        start = time.monotonic()
        await trigger()
        self.waiting = f"the service active on a new route (it was {' - '.join(old_route)})"
        try:
            return await self._after(admin, before, start, old_route, moved_to)
        except TimeoutError:
            raise TimeoutError(f"no re-route within {self.timeout:g} s: still waiting for {self.waiting}") from None

    async def _after(self, admin, before: dict, start: float, old_route: tuple[str, ...],
                     moved_to: str | None) -> tuple:
        async with asyncio.timeout(self.timeout):
            while True:
                service = await self.service(admin)
                if service is not None and service.status == "active" and (
                        service.route != old_route if moved_to is None else service.route[-1] == moved_to):
                    break
                await asyncio.sleep(POLL_S)
            routed = time.monotonic() - start
            last = [s for s in service.segments if s.ingress][-1]
            witness = self.km_of_node[last.ingress]
            counter = "received" if witness == self.destination_km else "forwarded"
            self.waiting = f"keys counted by {witness} ({counter}) on route {' - '.join(service.route)}"
            while True:  # the SAEs keep asking for keys; one that came the new way ends it
                matched = await self.exchange()
                counted = await self.counted(witness, counter)
                self.waiting = (f"keys on route {' - '.join(service.route)}: {witness} {counter} {counted} "
                                f"(before the trigger {before[(witness, counter)]}), last exchange "
                                f"{'matched' if matched else 'got no keys: ' + self.refused}")
                if matched and counted > before[(witness, counter)]:
                    return routed, time.monotonic() - start, service.route
                await asyncio.sleep(POLL_S)

    async def plant(self, rpc: str, span: str) -> None:
        from devices.host import PLANT_ID

        row = next(r for r in self.fed.host.table() if r.id == PLANT_ID)
        async with await self.fed.stacks["A"].endpoint(row.id, row.port).connect() as nc:
            await nc.dispatch(f'<{rpc} xmlns="{FIBRE_PLANT}"><span-id>{span}</span-id></{rpc}>')

    def span_leaving_a(self, service) -> str:
        site = self.site_of_node[service.segments[0].egress]
        return next(s.id for s in self.spans if site in (s.a.node, s.b.node))

    async def sae_at(self, domain: str, km: str) -> None:
        """The operator of `domain` attaches sae-c to its key manager `km` and advertises it."""
        from models.ns import KEY_MANAGER

        row = next(r for r in self.fed.host.table() if r.id == km)
        async with await self.fed.stacks[domain].endpoint(km, row.port, row.host_key).connect() as nc:
            await nc.edit_config(f'<key-manager xmlns="{KEY_MANAGER}"><saes><sae><sae-id>{DESTINATION[0]}</sae-id>'
                                 "</sae></saes></key-manager>")
        await self.fed.members[domain].sync()


async def main(trials: int, timeout: float) -> dict[str, list[tuple[float, float]]]:
    from devices.topology import embedded_topology
    from tools.federated_stack import ADMIN, FederatedStack, service_request, service_user
    from tools.federation_deploy import links_missing

    figures: dict[str, list[tuple[float, float]]] = {"cut": [], "move": []}
    async with FederatedStack(embedded_topology("federation.yaml")) as fed:
        await fed.federate(timeout)
        bench = Bench(fed, timeout)
        try:
            async with await fed.connect(service_user(SOURCE[1])) as user, await fed.connect(ADMIN) as admin:
                await user.edit_config(service_request(SERVICE, SOURCE[1], SOURCE, DESTINATION, RATE))
                async with asyncio.timeout(timeout):
                    while (service := await bench.service(admin)) is None or service.status != "active":
                        await asyncio.sleep(POLL_S)
                    while not await bench.exchange():
                        await asyncio.sleep(POLL_S)
                wanted = [(d, b.link_id) for d, m in fed.members.items() for b in m.border_links]
                for trial in range(trials):
                    service = await bench.service(admin)
                    span = bench.span_leaving_a(service)
                    routed, keys, route = await bench.measure(admin, lambda: bench.plant("cut-span", span),
                                                              service.route)
                    figures["cut"].append((routed, keys))
                    print(f"  cut {span}: {' - '.join(service.route)} -> {' - '.join(route)}: route {routed:.2f} s, "
                          f"keys {keys:.2f} s", flush=True)
                    await bench.plant("repair-span", span)
                    async with asyncio.timeout(timeout):
                        while await links_missing(admin, wanted):
                            await asyncio.sleep(POLL_S)
                for trial in range(trials):
                    domain, km = MOVES[trial % 2]
                    await bench.sae_at(domain, km)
                    service = await bench.service(admin)
                    bench.destination_km = km
                    routed, keys, route = await bench.measure(
                        admin, lambda: fed.members[domain].agent.move_sae(DESTINATION[0]), service.route, domain)
                    figures["move"].append((routed, keys))
                    print(f"  move sae-c to {km}: {' - '.join(service.route)} -> {' - '.join(route)}: route "
                          f"{routed:.2f} s, keys {keys:.2f} s", flush=True)
        finally:
            await bench.close()
    return figures


def run(args: argparse.Namespace) -> int:
    if args.trials < 1:
        print("qstrata bench federation: --trials must be >= 1")
        return 2
    print(f"re-routes across a federation of 4 domains (federation.yaml), {args.trials} trial(s) each", flush=True)
    figures = asyncio.run(main(args.trials, args.timeout))
    print(f"{'trigger':<8} {'trials':>6} {'route p50 s':>12} {'route max s':>12} {'keys p50 s':>11} "
          f"{'keys max s':>11}")
    for trigger, rows in figures.items():
        routes, keys = [r for r, _ in rows], [k for _, k in rows]
        print(f"{trigger:<8} {len(rows):>6} {statistics.median(routes):>12.2f} {max(routes):>12.2f} "
              f"{statistics.median(keys):>11.2f} {max(keys):>11.2f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
