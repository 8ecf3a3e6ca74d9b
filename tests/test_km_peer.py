"""The KM-to-KM protocol (devices/km_peer.py, docs/km-protocol.md) for real: key managers in
key networks of their own (nothing shared in process but the links' key bits), each behind a
real aiohttp HTTPS server on 127.0.0.1 with its certificate of a local CA (tools/pki.py),
calling its peers with a real aiohttp client presenting that certificate; curl as a
third-party client."""
from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess

import aiohttp
import pytest

from devices.etsi014 import Etsi014Server
from devices.keystore import (BadKeyRequest, KeyManager, KeyNetwork, KeyUnavailable, PeerRefused, PeerUnreachable,
                              RelayMessage, ReserveRequest, RoutingLoop, UnknownSAE)
from devices.km_peer import API, KmPeerApi, KmPeerClient, client_ssl_context
from devices.twin import Clock
from tools.pki import LocalCA, client_context, server_context

RATE_BPS = 100_000.0


class ManualTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Chain:
    """Key managers in a line (A - B - C - D ...), SAE sa at the first and sz at the last, a
    session sa -> sz; link "xy" joins X and Y. Every key manager is in a KeyNetwork of its own:
    the two ends of a link hold the same key stream (restored from one snapshot), nothing else."""

    def __init__(self, names: str, ca: LocalCA) -> None:
        self.names, self.ca = names, ca
        self.time = ManualTime()
        clock = Clock(source=self.time)
        self.networks = {name: KeyNetwork(clock) for name in names}
        self.servers: dict[str, Etsi014Server] = {}
        self.urls: dict[str, str] = {}   # where each key manager finds its peers (its configuration)
        self.clients = {name: KmPeerClient(name, client_ssl_context(*ca.server(name, hosts=(name,)).ssl_files()),
                                           self.urls.get) for name in names}
        self.kms = {name: KeyManager(name, self.networks[name], peers=self.clients[name]) for name in names}
        self.links = [f"{x}{y}".lower() for x, y in zip(names, names[1:])]
        for (x, y), link in zip(zip(names, names[1:]), self.links):
            stream = self.networks[x].stream(link)
            stream.set_rate(RATE_BPS)
            self.networks[y].adopt_stream(stream.snapshot())
            self.kms[x].add_link(link, y)
            self.kms[y].add_link(link, x)
        first, last = names[0], names[-1]
        for i, name in enumerate(names):
            if i + 1 < len(names):
                self.kms[name].set_route(last, names[i + 1], self.links[i])
            if i > 0:
                self.kms[name].set_route(first, names[i - 1], self.links[i - 1])
        self.kms[first].attach_sae("sa")
        self.kms[last].attach_sae("sz")
        self.kms[first].open_session("sa", "sz", rate_bps=1e6, burst_bits=100_000, peer_km=last)
        self.time.t += 1.0  # 100,000 bits on every link

    async def start(self) -> None:
        for name, km in self.kms.items():
            server = Etsi014Server(km, ssl_context=server_context(self.ca.server(name, hosts=(name,))),
                                   extra_routes=KmPeerApi(km).routes())
            await server.start()
            self.servers[name], self.urls[name] = server, server.url

    async def stop(self) -> None:
        for server in self.servers.values():
            await server.stop()
        for client in self.clients.values():
            await client.close()
        for km in self.kms.values():
            km.close()

    def tails(self) -> dict:
        return {(name, link): (p.tail, p.consumed_bits) for name, km in self.kms.items()
                for link, p in km.pools.items()}


@contextlib.asynccontextmanager
async def chain(tmp_path, names: str = "ABCD"):
    c = Chain(names, LocalCA(tmp_path / "pki"))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def post(url: str, body, ssl_context, raw: bytes | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context)) as http:
        kw = {"data": raw, "headers": {"Content-Type": "application/json"}} if raw is not None else {"json": body}
        async with http.post(url, **kw) as response:
            return response.status, await response.json()


def km_context(ca: LocalCA, name: str):
    """What key manager `name` presents when it calls (its certificate), trusting `ca`."""
    return client_ssl_context(*ca.server(name, hosts=(name,)).ssl_files())


@pytest.mark.parametrize("names", ["ABC", "ABCD"], ids=["2 hops", "3 hops"])
def test_keys_relayed_over_the_network_match_at_both_ends_and_are_served_once(tmp_path, names):
    async def main():
        async with chain(tmp_path, names) as c:
            first, last = c.kms[names[0]], c.kms[names[-1]]
            keys = await first.enc_keys("sa", "sz", number=3, size=256)
            assert last.stored_key_count == 3
            for link in c.links:   # both ends of every link used the same bits
                x, y = (km for km in c.kms.values() if link in km.pools)
                assert x.pools[link].tail == y.pools[link].tail == 768
            assert last.dec_keys("sz", "sa", [k.key_id for k in keys]) == keys
            with pytest.raises(BadKeyRequest, match="already delivered"):
                last.dec_keys("sz", "sa", [keys[0].key_id])
            assert [km.stats.keys_relayed for km in c.kms.values()] == [0] + [3] * (len(names) - 2) + [0]
            status = await first.status("sa", "sz")
            assert (status.target_km, status.stored_key_count) == (names[-1], (100_000 - 768) // 256)
    asyncio.run(main())


def test_a_key_manager_calling_with_another_certificate_or_none_is_refused_and_nothing_is_consumed(tmp_path):
    async def main():
        async with chain(tmp_path) as c:
            before = c.tails()
            relay = {"link_id": "ab", "offset": 0, "destination_km": "D", "master_SAE_ID": "sa", "slave_SAE_ID": "sz",
                     "keys": [{"key_ID": "k1", "ciphertext": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}
            url = f"{c.urls['B']}{API}/relay"
            # C's own valid certificate: but link ab is A's, not C's
            status, body = await post(url, relay, km_context(c.ca, "C"))
            assert (status, body["error"]) == (403, "PeerRefused")
            assert body["message"] == "key manager B takes messages on link ab only from key manager A, not from C"
            # an SAE's certificate of the same CA: it is no pool's peer, and learns nothing of the pools
            status, body = await post(url, relay, client_context(c.ca.client("sa")))
            assert (status, body["error"], body["message"]) == (403, "PeerRefused",
                                                                 "key manager B shares no QKD link with sa")
            # a certificate of another CA, or none: no TLS connection at all
            stranger = LocalCA(tmp_path / "other-ca")
            for context in (client_ssl_context(*stranger.server("A", hosts=("A",)).ssl_files()),
                            client_context(ca_file=c.ca.ca_file)):
                with pytest.raises(aiohttp.ClientError):
                    await post(url, relay, context)
            # the same refusal through our client, raised again as the same class and message
            with pytest.raises(PeerRefused, match="only from key manager A, not from C"):
                await c.clients["C"].send("C", "B", RelayMessage("ab", 0, "D", "sa", "sz", ("k1",), (b"x" * 32,)))
            assert c.tails() == before and c.kms["B"].stored_key_count == c.kms["D"].stored_key_count == 0
    asyncio.run(main())


def test_a_server_with_another_key_managers_certificate_is_not_taken_for_the_peer(tmp_path):
    async def main():
        async with chain(tmp_path) as c:
            before = c.tails()
            c.urls["B"] = c.urls["C"]   # A's configuration points at C's address for B
            with pytest.raises(PeerUnreachable) as error:
                await c.kms["A"].enc_keys("sa", "sz")
            assert error.value.message == "key manager B is unreachable"
            assert "B" in error.value.details[0]["reason"]   # the certificate does not name B
            assert c.tails() == before and c.kms["A"].sessions[("sa", "sz")].bucket.available() == 100_000
    asyncio.run(main())


def test_a_relay_whose_last_hop_lacks_key_fails_whole_naming_the_hop(tmp_path):
    async def main():
        async with chain(tmp_path) as c:
            await c.kms["C"].drain("cd", 100_000 - 512)   # over the network: D discards the same bits
            assert c.kms["D"].pools["cd"].available_bits() == 512
            before = c.tails()
            with pytest.raises(KeyUnavailable) as error:
                await c.kms["A"].enc_keys("sa", "sz", number=3, size=256)
            assert type(error.value) is KeyUnavailable
            assert error.value.message == "not enough key on link cd (C -> D): 512 bits, 768 needed"
            assert error.value.details == [{"link": "cd", "available_bits": 512, "needed_bits": 768}]
            assert c.tails() == before and c.kms["D"].stored_key_count == 0
            assert c.kms["A"].sessions[("sa", "sz")].bucket.available() == 100_000
    asyncio.run(main())


def test_a_peer_that_is_down_is_unreachable_and_nothing_is_consumed(tmp_path):
    async def main():
        async with chain(tmp_path) as c:
            await c.servers["C"].stop()
            before = c.tails()
            with pytest.raises(PeerUnreachable) as error:
                await c.kms["A"].enc_keys("sa", "sz")
            assert isinstance(error.value, KeyUnavailable) and error.value.message == "key manager C is unreachable"
            assert error.value.http_status == 503
            assert c.tails() == before
    asyncio.run(main())


def test_remote_errors_come_back_as_the_same_class(tmp_path):
    async def main():
        async with chain(tmp_path) as c:
            c.kms["A"].open_session("sa", "sx", rate_bps=1e6, burst_bits=100_000, peer_km="D")
            with pytest.raises(UnknownSAE, match="^SAE sx is not served by key manager D$"):
                await c.kms["A"].enc_keys("sa", "sx")
            c.kms["C"].set_route("D", "B", "bc")
            with pytest.raises(RoutingLoop, match="routing loop towards key manager D: A -> B -> C -> B"):
                await c.kms["A"].enc_keys("sa", "sz")
            with pytest.raises(PeerRefused, match="key manager B does not allocate the key of link ab: key manager A does"):
                await c.clients["A"].send("A", "B", ReserveRequest("ab", 256, 0))   # A hands out ab's key itself
            assert all(tail == (0, 0) for tail in c.tails().values())
    asyncio.run(main())


@pytest.mark.parametrize("path, body, message", [
    ("plan", {"link_id": "ab", "destination_km": "D", "bits": 7, "visited": ["A"]},
     "bits must be a multiple of 8 from 0 to"),
    ("plan", {"link_id": "ab", "destination_km": "D", "bits": 8}, "missing field(s) visited"),
    ("plan", {"link_id": "ab", "destination_km": "D", "bits": 8, "visited": ["A"], "hops": 1},
     "unknown field(s) 'hops'"),
    ("plan", {"link_id": "ab", "destination_km": "D", "bits": 8, "visited": ["A"], "master_SAE_ID": "sa"},
     "master_SAE_ID and slave_SAE_ID go together"),
    ("relay", {"link_id": "ab", "offset": 0, "destination_km": "D", "master_SAE_ID": "sa", "slave_SAE_ID": "sz",
               "keys": [{"key_ID": "k", "ciphertext": "not base64!"}]}, "keys[0].ciphertext must be non-empty base64"),
    ("relay", {"link_id": "ab", "offset": -8, "destination_km": "D", "master_SAE_ID": "sa", "slave_SAE_ID": "sz",
               "keys": []}, "keys must be a list of 1 to 1024 objects"),
    ("discard", {"link_id": "ab", "offset": 0, "bits": True}, "bits must be a multiple of 8"),
    ("reserve", {"link_id": "ab", "bits": 0, "not_before": 0}, "bits must be more than 0"),
    ("reserve", {"link_id": "ab", "bits": 8}, "missing field(s) not_before"),
    ("discard", [1, 2], "request body must be a JSON object"),
])
def test_bad_messages_are_400_with_the_field_named_and_change_nothing(tmp_path, path, body, message):
    async def main():
        async with chain(tmp_path) as c:
            before = c.tails()
            status, answer = await post(f"{c.urls['B']}{API}/{path}", body, km_context(c.ca, "A"))
            assert (status, answer["error"]) == (400, "BadKeyRequest") and message in answer["message"], answer
            status, answer = await post(f"{c.urls['B']}{API}/relay", None, km_context(c.ca, "A"),
                                        raw=b"{" + b" " * (2 * 1024 * 1024) + b"}")
            assert (status, answer["error"]) == (413, "BodyTooLarge")
            assert c.tails() == before
    asyncio.run(main())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_the_peers_certificate_reads_the_tail_and_with_another_is_refused(tmp_path):
    async def main():
        async with chain(tmp_path) as c:
            await c.kms["A"].enc_keys("sa", "sz")
            url = f"{c.urls['B']}{API}/links/ab/tail"

            def curl(name: str) -> tuple[int, dict]:
                credential = c.ca.server(name, hosts=(name,))
                result = subprocess.run(
                    ["curl", "-sS", "--cacert", str(c.ca.ca_file), "--cert", str(credential.cert_file),
                     "--key", str(credential.key_file), "-w", "\n%{http_code}", url],
                    capture_output=True, text=True, timeout=30)
                body, _, code = result.stdout.rpartition("\n")
                return int(code), json.loads(body)

            assert await asyncio.to_thread(curl, "A") == (200, {"tail": 256})
            status, body = await asyncio.to_thread(curl, "C")
            assert (status, body["error"]) == (403, "PeerRefused")
    asyncio.run(main())


def test_concurrent_relays_never_share_a_pad(tmp_path):
    """Many enc_keys at once from both ends: every key arrives intact, and on every link both
    ends used exactly the bits they recorded (overlapping pads would leave a tail below the
    bits consumed)."""
    async def main():
        async with chain(tmp_path) as c:
            c.kms["D"].attach_sae("sz")
            c.kms["D"].open_session("sz", "sa", rate_bps=1e6, burst_bits=100_000, peer_km="A")
            c.kms["A"].attach_sae("sa")
            requests = [c.kms["A"].enc_keys("sa", "sz", number=2) for _ in range(8)] + \
                       [c.kms["D"].enc_keys("sz", "sa", number=1) for _ in range(8)]
            results = await asyncio.gather(*requests)
            forward, backward = [k for r in results[:8] for k in r], [k for r in results[8:] for k in r]
            assert c.kms["D"].dec_keys("sz", "sa", [k.key_id for k in forward]) == forward
            assert c.kms["A"].dec_keys("sa", "sz", [k.key_id for k in backward]) == backward
            for (name, link), (tail, consumed) in c.tails().items():
                assert tail == consumed == 24 * 256, (name, link)
    asyncio.run(main())
