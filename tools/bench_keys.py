"""`qstrata bench keys`: ETSI GS QKD 014 enc_keys and dec_keys latency of a key-manager pair
while many undelivered keys wait at the slave's key manager.

Key managers A - B over one QKD link, SAE sa at A and sb at B, their state on disk (SQLite, as
in the device host), each serving ETSI 014 over HTTPS with SAE client certificates on a port of
127.0.0.1; A relays the keys to B either in memory (`InMemoryPeers`, the unit tests' channel)
or over the KM-to-KM protocol (devices/km_peer.py, HTTPS with mutual TLS, as the devices do),
one row each per level, side by side. For each level (default 0,
10,000 and 100,000 keys) keys for sb are issued and left waiting at B until the level is
reached, then, --samples times, one client asks A for a key (GET enc_keys) and B for that key
(POST dec_keys), so the level holds while it is measured. Reported per level: latency p50 and
p99 of each call, as the client sees it, and the size of B's state files. The costs an
operation pays should not grow with the keys waiting (the former JSON state file was rewritten
whole, with an fsync, by every operation).

    python -m tools.bench_keys [--levels 0 10000 100000] [--samples 200] [--state-dir DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import tempfile
import time

FILL_BATCH = 128  # keys per enc_keys while filling (the most one request may ask for)
WARM_UP = 5  # enc_keys + dec_keys pairs before the first row of each relay
RELAYS = ("in-memory", "https")  # how A relays keys to B: the two implementations side by side


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 10_000, 100_000],
                        help="undelivered keys waiting at the slave's key manager, one row each "
                             "(default 0 10000 100000)")
    parser.add_argument("--samples", type=int, default=200, help="enc_keys + dec_keys pairs per level (default 200)")
    parser.add_argument("--state-dir", type=pathlib.Path,
                        help="where the key managers keep their state (default: a temporary directory)")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def _pair(relay: str, state_dir: pathlib.Path, limits, ca) -> tuple:
    """Key managers A - B with SAEs sa and sb, serving ETSI 014 over HTTPS (client certificates of
    `ca`); A relays to B in memory (`relay` "in-memory") or over the KM-to-KM protocol ("https")."""
    from devices.etsi014 import Etsi014Server
    from devices.key_manager import AccountedKeyManager
    from devices.keystore import KeyNetwork
    from devices.km_peer import KmPeerApi, KmPeerClient, client_ssl_context
    from devices.twin import Clock
    from tools.pki import server_context

    network = KeyNetwork(Clock())
    servers: dict = {}
    peers = {km: KmPeerClient(km, client_ssl_context(*ca.server(km, hosts=(km,)).ssl_files()),
                              lambda peer: servers[peer].url if peer in servers else None)
             for km in "AB"} if relay == "https" else {"A": None, "B": None}
    a, b = (AccountedKeyManager(km, network, state_dir, limits, peers[km]) for km in "AB")
    a.add_link("ab", "B", max_bits=2**40)
    b.add_link("ab", "A", max_bits=2**40)
    network.stream("ab").set_rate(1e10)  # key is never what is short
    a.set_route("B", "B", "ab")
    a.attach_sae("sa")
    b.attach_sae("sb")
    a.open_session("sa", "sb", rate_bps=1e12, burst_bits=2**40, peer_km="B")
    for km in (a, b):
        servers[km.id] = Etsi014Server(km, ssl_context=server_context(ca.server(km.id, hosts=(km.id,))),
                                       extra_routes=KmPeerApi(km).routes())
        await servers[km.id].start()
    return network, a, b, servers, peers


async def bench(levels: list[int], samples: int, state_dir: pathlib.Path) -> list[dict]:
    import aiohttp

    from devices.keystore import KeyLimits
    from tools.pki import LocalCA, client_context

    ca = LocalCA(state_dir / "pki")
    limits = KeyLimits(max_stored_keys=max(levels) + samples + FILL_BATCH)
    rows = []
    for relay in RELAYS:
        directory = state_dir / relay
        network, a, b, servers, peers = await _pair(relay, directory, limits, ca)
        await asyncio.sleep(0.01)
        sa, sb = (aiohttp.TCPConnector(ssl=client_context(ca.client(sae))) for sae in ("sa", "sb"))
        try:
            async with aiohttp.ClientSession(connector=sa) as http_a, aiohttp.ClientSession(connector=sb) as http_b:
                enc_url = f"{servers['A'].url}/api/v1/keys/sb/enc_keys"
                dec_url = f"{servers['B'].url}/api/v1/keys/sa/dec_keys"
                for _ in range(WARM_UP):   # connections opened, code paths run once: not measured
                    async with http_a.get(enc_url) as reply:
                        body = await reply.json()
                    async with http_b.post(dec_url, json={"key_IDs": [{"key_ID": body["keys"][0]["key_ID"]}]}):
                        pass
                for level in sorted(levels):
                    started = time.perf_counter()
                    while b.stored_key_count < level:
                        await a.enc_keys("sa", "sb", min(FILL_BATCH, level - b.stored_key_count))
                    fill_s = time.perf_counter() - started
                    enc, dec = [], []
                    for _ in range(samples):
                        started = time.perf_counter()
                        async with http_a.get(enc_url) as reply:
                            body = await reply.json()
                            assert reply.status == 200, body
                        enc.append(time.perf_counter() - started)
                        started = time.perf_counter()
                        async with http_b.post(dec_url, json={"key_IDs": [{"key_ID": body["keys"][0]["key_ID"]}]}) \
                                as reply:
                            got = await reply.json()
                            assert reply.status == 200 and got["keys"] == body["keys"], got
                        dec.append(time.perf_counter() - started)
                    assert b.stored_key_count == level
                    size = sum(p.stat().st_size for p in directory.glob("B.db*"))
                    rows.append({"level": level, "relay": relay, "fill_s": fill_s, "enc": enc, "dec": dec,
                                 "state_bytes": size})
        finally:
            for server in servers.values():
                await server.stop()
            for client in peers.values():
                if client is not None:
                    await client.close()
            for km in (a, b):
                network.unregister(km.id)
                km.close()
    return sorted(rows, key=lambda r: (r["level"], RELAYS.index(r["relay"])))


def report(rows: list[dict], samples: int, state_dir: pathlib.Path) -> str:
    lines = [f"key managers A - B, state in {state_dir} (SQLite WAL, synced every commit); "
             f"{samples} enc_keys + dec_keys per row over ETSI 014 (HTTPS, client certificates) on loopback; "
             f"A relays to B in memory, or over the KM-to-KM protocol (HTTPS, mutual TLS)",
             f"{'waiting keys':>12}  {'enc_keys p50':>12}  {'p99':>8}  {'dec_keys p50':>12}  {'p99':>8}  "
             f"{'B state':>9}  {'filled in':>9}  relay"]
    for r in rows:
        lines.append(f"{r['level']:>12,}  {1e3 * statistics.median(r['enc']):>9.2f} ms  "
                     f"{1e3 * percentile(r['enc'], 0.99):>5.2f} ms  {1e3 * statistics.median(r['dec']):>9.2f} ms  "
                     f"{1e3 * percentile(r['dec'], 0.99):>5.2f} ms  {r['state_bytes'] / 2**20:>6.1f} MB  "
                     f"{r['fill_s']:>7.1f} s  {r['relay']}")
    return "\n".join(lines)


def main(levels: list[int], samples: int, state_dir: pathlib.Path | None = None) -> int:
    if samples < 1 or any(level < 0 for level in levels):
        print("qstrata bench keys: --samples must be >= 1 and --levels >= 0")
        return 2
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-keys-") as scratch:
        directory = state_dir if state_dir is not None else pathlib.Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        rows = asyncio.run(bench(levels, samples, directory))
        print(report(rows, samples, directory))
    return 0


def run(args: argparse.Namespace) -> int:
    return main(args.levels, args.samples, args.state_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
