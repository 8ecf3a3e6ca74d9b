"""RESTCONF benchmark: one NetconfServer of the engine test model, in its own process, with
RESTCONF on (plain HTTP on loopback), measured over NETCONF (netconf_core.client, SSH) and over
RESTCONF (aiohttp's client, keep-alive) in one run, side by side: the same datastore, the same
payload (tools.bench_netconf's: 20 interfaces), the same reads and writes.

Rows: reads of the interfaces (NETCONF <get> with a subtree filter; RESTCONF GET of
/restconf/data/qs-engine-test:interfaces, JSON and XML) one at a time and with several in
flight (NETCONF pipelined on one session, RESTCONF on as many connections); writes of a new
mtu (NETCONF <edit-config> merge; RESTCONF PATCH of /restconf/data/qs-engine-test:system), one
at a time. Each cell runs for a bounded time; the transports take turns row by row for several
rounds, and each cell is the median of its rounds.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp

from tools import conform
from tools.bench_netconf import (INTERFACES, PAYLOAD, ROOT, Rate, Row, Target, finish, pipelined_get, rate,
                                 sequential_edit)

PASSWORD_VARIABLE = "QSTRATA_BENCH_RESTCONF_PASSWORD"  # how the server process gets its password
COLUMNS = ("NETCONF", "RESTCONF JSON", "RESTCONF XML")
MEDIA = {"RESTCONF JSON": "application/yang-data+json", "RESTCONF XML": "application/yang-data+xml"}
INTERFACES_URL = "/restconf/data/qs-engine-test:interfaces"
SYSTEM_URL = "/restconf/data/qs-engine-test:system"


@dataclass
class Served:
    netconf: Target
    restconf_url: str
    password: str


@contextmanager
def served() -> Iterator[Served]:
    """The server in its own process (so that the clients do not share its CPU)."""
    password = secrets.token_urlsafe(12)
    process = subprocess.Popen([sys.executable, "-m", "tools.bench_restconf", "--serve"], stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(ROOT), PASSWORD_VARIABLE: password})
    try:
        assert process.stdout is not None
        match = re.search(r"NETCONF on 127\.0\.0\.1:(\d+), RESTCONF on (http://127\.0\.0\.1:\d+)",
                          process.stdout.readline())
        if match is None:
            raise RuntimeError("the benchmark's server did not start")
        yield Served(Target("NETCONF", "127.0.0.1", int(match.group(1)), "admin", password=password),
                     match.group(2), password)
    finally:
        process.terminate()
        process.wait(10)


# --- measurements ---------------------------------------------------------------------------------


class Restconf:
    """aiohttp sessions to the server, keep-alive, `connections` at most."""

    def __init__(self, served: Served, connections: int):
        self.base = served.restconf_url
        self.auth = aiohttp.encode_basic_auth("admin", served.password)
        self.connections = connections

    async def run(self, make: Callable[[aiohttp.ClientSession], list[Callable[[], Awaitable[object]]]],
                  seconds: float) -> float:
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
        async with aiohttp.ClientSession(connector=connector, headers={"Authorization": self.auth}) as session:
            return (await rate(make(session), seconds)).per_second


async def _expect(response: aiohttp.ClientResponse, status: int) -> None:
    await response.read()
    if response.status != status:
        raise RuntimeError(f"{response.method} {response.url}: {response.status}, expected {status}")


def restconf_get(client: Restconf, media: str, parallel: int, seconds: float) -> Awaitable[float]:
    def make(session: aiohttp.ClientSession):
        async def get() -> None:
            async with session.get(client.base + INTERFACES_URL, headers={"Accept": media}) as response:
                await _expect(response, 200)
        return [get] * parallel
    return client.run(make, seconds)


def restconf_patch(client: Restconf, media: str, seconds: float) -> Awaitable[float]:
    values = itertools.cycle(range(1000, 9000))

    def body() -> str:
        mtu = next(values)
        if media.endswith("json"):
            return f'{{"qs-engine-test:system": {{"mtu": {mtu}}}}}'
        return f'<system xmlns="{conform.NS}"><mtu>{mtu}</mtu></system>'

    def make(session: aiohttp.ClientSession):
        async def patch() -> None:
            async with session.patch(client.base + SYSTEM_URL, data=body(), headers={"Content-Type": media}) as response:
                await _expect(response, 204)
        return [patch]
    return client.run(make, seconds)


async def load_payload(target: Target, client: Restconf) -> None:
    """The payload, over NETCONF; then the check that RESTCONF reads the same interfaces."""
    nc = await target.connect()
    try:
        await nc.edit_config(PAYLOAD, target="running")
    finally:
        await finish(nc)
    async with aiohttp.ClientSession(headers={"Authorization": client.auth}) as session:
        async with session.get(client.base + INTERFACES_URL, headers={"Accept": MEDIA["RESTCONF JSON"]}) as response:
            body = await response.json(content_type=None)
    count = len(body["qs-engine-test:interfaces"]["interface"])
    if count != INTERFACES:
        raise RuntimeError(f"RESTCONF reads {count} interfaces, not the payload's {INTERFACES}")


async def per_second(measurement: Awaitable[Rate]) -> float:
    return (await measurement).per_second


async def measure(served: Served, seconds: float, depth: int, rounds: int) -> list[Row]:
    restconf = Restconf(served, depth)
    await load_payload(served.netconf, restconf)
    target = served.netconf
    rows = [
        (Row("reads/s, one at a time", "/s", {}), {
            "NETCONF": lambda: per_second(pipelined_get(target, seconds, 1)),
            **{name: (lambda m=media: restconf_get(restconf, m, 1, seconds)) for name, media in MEDIA.items()}}),
        (Row(f"reads/s, {depth} in flight", "/s", {}), {
            "NETCONF": lambda: per_second(pipelined_get(target, seconds, depth)),
            **{name: (lambda m=media: restconf_get(restconf, m, depth, seconds)) for name, media in MEDIA.items()}}),
        (Row("writes/s, one at a time", "/s", {}), {
            "NETCONF": lambda: per_second(sequential_edit(target, seconds)),
            **{name: (lambda m=media: restconf_patch(restconf, m, seconds)) for name, media in MEDIA.items()}}),
    ]
    for turn in range(rounds):
        for row, cells in rows:
            for name in COLUMNS:
                print(f"round {turn + 1}/{rounds}, {name}: {row.title} ...", file=sys.stderr, flush=True)
                row.samples.setdefault(name, []).append(await cells[name]())
    return [row for row, _ in rows]


def table(rows: list[Row]) -> str:
    lines = [f"{'':28}" + "".join(f"{name:>16}" for name in COLUMNS) + f"{'JSON/NETCONF':>15}"]
    for row in rows:
        values = [row.value(name) for name in COLUMNS]
        lines.append(f"{row.title:28}" + "".join(f"{v:>16.0f}" for v in values) + f"{values[1] / values[0]:>14.2f}x")
    return "\n".join(lines)


def main(seconds: float = 2.0, depth: int = 16, rounds: int = 3) -> int:
    if seconds <= 0 or depth < 1 or rounds < 1:
        raise SystemExit("--seconds, --depth and --rounds must be positive")
    with served() as server:
        rows = asyncio.run(measure(server, seconds, depth, rounds))
    print(f"RESTCONF and NETCONF on one server: {conform.MODULE} model, {INTERFACES} interfaces per read, "
          f"mtu writes; {seconds:g} s per cell, median of {rounds} rounds; NETCONF over SSH "
          "(netconf_core.client), RESTCONF over plain HTTP on loopback (aiohttp, keep-alive)")
    print(table(rows))
    return 0


# --- the server process -------------------------------------------------------------------------------


async def _serve() -> None:
    from netconf_core.restconf import RestconfServer
    from netconf_core.schema import Schema
    from netconf_core.server import NetconfServer, User, standard_nacm

    schema = Schema([conform.MODULE], [conform.MODEL_DIR])
    server = NetconfServer(schema, {"admin": User(password=os.environ[PASSWORD_VARIABLE])},
                           nacm=standard_nacm(["admin"], []), name="bench-restconf")
    await server.start()
    restconf = RestconfServer(server, "127.0.0.1", 0)
    await restconf.start()
    print(f"NETCONF on 127.0.0.1:{server.port}, RESTCONF on {restconf.url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(_serve())
    else:
        sys.exit(main())
