"""End to end on the emulated Madrid network, as an operator would do it by hand: ncclient
configures the optical switch, the PHYS links on both QKD nodes of each hop and the key
managers of a three-hop path (Quintin - Almagro - Norte - Distrito); applications fetch keys
over real HTTP (aiohttp) with ETSI GS QKD 014 at both ends; a key manager crashes and comes
back; every device's get output is checked by yanglint."""
from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import pytest
from lxml import etree
from ncclient import manager

from device_checks import yanglint
from devices.etsi014 import SAE_HEADER
from devices.host import DeviceHost
from models.ns import KEY_MANAGER as KM
from devices.qkd_node import node_uuid
from models.ns import ETSI_NODE as NODE, ETSI_TYPES as TYPES_NS
from devices.optical_switch import NS as SWITCH
from devices.topology import default_topology

# The three PHYS links of the path: (qkdl_id, (node, interface), (node, interface), key managers).
LINKS = {
    "quintin-almagro": ("0a000000-0000-4000-8000-000000000001", ("qkd-quintin", 2), ("qkd-almagro", 2)),
    "almagro-norte": ("0a000000-0000-4000-8000-000000000002", ("qkd-almagro", 3), ("qkd-norte", 1)),
    "norte-distrito": ("0a000000-0000-4000-8000-000000000003", ("qkd-norte", 2), ("qkd-distrito", 1)),
}
# sw-norte joins the span from Almagro (port 2) to qkd-norte if1 (port 5), and qkd-norte if2
# (port 6) to the span to Distrito (port 3).
CROSS_CONNECTS = (("almagro-in", 2, 5), ("distrito-out", 6, 3))
PATH = ("km-quintin", "km-almagro", "km-norte", "km-distrito")
SESSION_BURST = 2048  # bits: eight 256-bit keys; the rate (1 b/s) never refills it during the test


@pytest.fixture
def madrid(loop_thread, tmp_path):
    host = DeviceHost(default_topology(), state_dir=tmp_path / "state", speed=5.0, seed=7,
                      insecure_sae_header=True)   # ETSI 014 over TLS: tests/test_etsi014_tls.py
    loop_thread.run(host.start())
    yield host
    loop_thread.run(host.stop())


class Operator:
    """An operator's ncclient sessions, one per device, opened on first use."""

    def __init__(self, host: DeviceHost) -> None:
        self.host = host
        self.sessions: dict[str, manager.Manager] = {}

    def session(self, device_id: str) -> manager.Manager:
        if device_id not in self.sessions:
            self.sessions[device_id] = manager.connect(
                host="127.0.0.1", port=self.host.device(device_id).port, username="admin", password="admin",
                hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=30)
        return self.sessions[device_id]

    def edit(self, device_id: str, config: str) -> None:
        self.session(device_id).edit_config(
            target="running", config=f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">{config}</config>')

    def km_state(self, km: str) -> etree._Element:
        reply = self.session(km).get(filter=("subtree", f'<key-manager xmlns="{KM}"/>'))
        return reply.data_ele.find(f"{{{KM}}}key-manager")

    def forget(self, device_id: str) -> None:
        """The device went down: its session is gone."""
        self.sessions.pop(device_id).close_session()

    def close(self) -> None:
        for m in self.sessions.values():
            m.close_session()


@pytest.fixture
def operator(madrid):
    person = Operator(madrid)
    yield person
    person.close()


def cross_connects() -> str:
    entries = "".join(f"<cross-connect><name>{name}</name><in-port>{a}</in-port><out-port>{b}</out-port>"
                      f"</cross-connect>" for name, a, b in CROSS_CONNECTS)
    return f'<optical-switch xmlns="{SWITCH}"><cross-connects>{entries}</cross-connects></optical-switch>'


def phys_links(node: str) -> str:
    """Every PHYS link of the path that ends at QKD node `node`, seen from that node."""
    entries = ""
    for link_id, a, b in LINKS.values():
        for (local, local_if), (remote, remote_if) in ((a, b), (b, a)):
            if local == node:
                entries += (f"<qkd_link><qkdl_id>{link_id}</qkdl_id><qkdl_type>t:PHYS</qkdl_type>"
                            f"<qkdl_local><qkdn_id>{node_uuid(local)}</qkdn_id><qkdi_id>{local_if}</qkdi_id></qkdl_local>"
                            f"<qkdl_remote><qkdn_id>{node_uuid(remote)}</qkdn_id><qkdi_id>{remote_if}</qkdi_id>"
                            f"</qkdl_remote></qkd_link>")
    return f'<qkd_node xmlns="{NODE}" xmlns:t="{TYPES_NS}"><qkd_links>{entries}</qkd_links></qkd_node>'


def key_manager(km: str, urls: dict[str, str]) -> str:
    """The pools of `km`'s links on the path, where their peers are (`urls`: their KM-to-KM
    interface, the ETSI 014 listener), its routes to both ends, and the session
    sae-quintin -> sae-distrito at the ends."""
    at = PATH.index(km)
    link_ids = [link_id for link_id, _, _ in LINKS.values()]
    pools = routes = sessions = peers = ""
    for neighbour, link_id, destination in ((at - 1, link_ids[at - 1] if at else None, PATH[0]),
                                            (at + 1, link_ids[at] if at < len(link_ids) else None, PATH[-1])):
        if link_id is None:
            continue
        pools += f"<key-pool><link-id>{link_id}</link-id><peer-km-id>{PATH[neighbour]}</peer-km-id></key-pool>"
        peers += f"<peer><km-id>{PATH[neighbour]}</km-id><url>{urls[PATH[neighbour]]}</url></peer>"
        routes += (f"<route><destination-km-id>{destination}</destination-km-id><next-hop-km-id>{PATH[neighbour]}"
                   f"</next-hop-km-id><via-link-id>{link_id}</via-link-id></route>")
    if km in (PATH[0], PATH[-1]):
        peer = PATH[-1] if km == PATH[0] else PATH[0]
        sessions = (f"<sessions><session><session-id>quintin-distrito</session-id>"
                    f"<master-sae-id>sae-quintin</master-sae-id><slave-sae-id>sae-distrito</slave-sae-id>"
                    f"<peer-km-id>{peer}</peer-km-id><qos><rate>1</rate><burst>{SESSION_BURST}</burst>"
                    f"<ttl>3600</ttl></qos></session></sessions>")
    return (f'<key-manager xmlns="{KM}"><peers>{peers}</peers><key-pools>{pools}</key-pools><forwarding-table>{routes}'
            f"</forwarding-table>{sessions}</key-manager>")


def km_leaf(node: etree._Element, path: str) -> str | None:
    return node.findtext("/".join(f"{{{KM}}}{step}" for step in path.split("/")))


class Applications:
    """The two SAEs, speaking ETSI GS QKD 014 to their key managers over HTTP."""

    def __init__(self, host: DeviceHost) -> None:
        self.quintin = f"{host.device('km-quintin').etsi014_url}/api/v1/keys"
        self.distrito = f"{host.device('km-distrito').etsi014_url}/api/v1/keys"

    def call(self, method: str, url: str, sae: str, **kw) -> tuple[int, dict]:
        async def main():
            async with aiohttp.ClientSession() as http:
                async with http.request(method, url, headers={SAE_HEADER: sae}, **kw) as response:
                    return response.status, await response.json()
        return asyncio.run(main())

    def status(self) -> tuple[int, dict]:
        return self.call("GET", f"{self.quintin}/sae-distrito/status", "sae-quintin")

    def enc_keys(self, number: int) -> tuple[int, dict]:
        return self.call("POST", f"{self.quintin}/sae-distrito/enc_keys", "sae-quintin", json={"number": number})

    def dec_keys(self, key_ids: list[str]) -> tuple[int, dict]:
        return self.call("POST", f"{self.distrito}/sae-quintin/dec_keys", "sae-distrito",
                         json={"key_IDs": [{"key_ID": k} for k in key_ids]})


def wait_for(condition, what: str, seconds: float = 20.0):
    """Poll `condition()` until it returns something true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def keys_of(body: dict) -> dict[str, bytes]:
    return {k["key_ID"]: base64.b64decode(k["key"]) for k in body["keys"]}


def test_keys_cross_three_trusted_hops_configured_by_hand(madrid, operator, loop_thread, tmp_path):
    operator.edit("sw-norte", cross_connects())
    for node in ("qkd-quintin", "qkd-almagro", "qkd-norte", "qkd-distrito"):
        operator.edit(node, phys_links(node))
    for km in reversed(PATH):
        operator.edit(km, key_manager(km, {row.id: row.etsi014_url for row in madrid.table() if row.etsi014_url}))
    apps = Applications(madrid)

    # Key flows once every hop's link is ACTIVE and both ends' pools fill.
    wait_for(lambda: apps.status()[1].get("stored_key_count", 0) >= SESSION_BURST // 256, "keys on every hop")
    status, body = apps.status()
    assert status == 200 and (body["source_KME_ID"], body["target_KME_ID"]) == ("km-quintin", "km-distrito")
    assert wait_for(lambda: km_leaf(operator.km_state("km-quintin"), "sessions/session/status") == "active",
                    "the session to be active")

    # enc_keys at Quintin, dec_keys at Distrito: the same bytes, and only once.
    status, sent = apps.enc_keys(4)
    assert status == 200, sent
    status, received = apps.dec_keys(list(keys_of(sent)))
    assert status == 200, received
    assert keys_of(received) == keys_of(sent) and all(len(k) == 32 for k in keys_of(sent).values())
    status, again = apps.dec_keys(list(keys_of(sent))[:1])
    assert status == 400 and "already delivered" in again["message"]
    relay = operator.km_state("km-almagro")
    assert (km_leaf(relay, "relay-statistics/relayed-keys"), km_leaf(relay, "relay-statistics/relayed-bits")) == \
        ("4", "1024")

    # Two keys wait at Distrito while its key manager crashes; Quintin's requests fail meanwhile.
    status, waiting = apps.enc_keys(2)
    assert status == 200
    distrito = operator.session("km-distrito")
    distrito.copy_config(source="running", target="startup")
    startup = distrito.get_config(source="startup").data_xml
    before = {p.findtext(f"{{{KM}}}link-id"): km_leaf(p, "consumed")
              for p in operator.km_state("km-distrito").iter(f"{{{KM}}}key-pool")}
    operator.forget("km-distrito")
    loop_thread.run(madrid.crash("km-distrito"))
    status, refused = apps.enc_keys(1)
    assert status == 503 and "key manager km-distrito is unreachable" in refused["message"]
    loop_thread.run(madrid.restart("km-distrito"))
    assert operator.session("km-distrito").get_config(source="running").data_xml == startup
    after = {p.findtext(f"{{{KM}}}link-id"): km_leaf(p, "consumed")
             for p in operator.km_state("km-distrito").iter(f"{{{KM}}}key-pool")}
    assert after == before == {LINKS["norte-distrito"][0]: "1536"}  # six keys of 256 bits came over the link
    status, received = apps.dec_keys(list(keys_of(waiting)))
    assert status == 200 and keys_of(received) == keys_of(waiting)

    # The session's bucket holds 2048 bits and refills at 1 b/s: 6 keys taken, 2 left.
    status, refused = apps.enc_keys(4)
    assert status == 503 and "session rate exceeded" in refused["message"]
    status, last = apps.enc_keys(2)
    assert status == 200 and len(last["keys"]) == 2

    # Every device's get output, as configured and running, is valid for yanglint.
    for row in madrid.table():
        data = operator.session(row.id).get().data_ele
        own = [e for e in data if madrid.device(row.id).schema.module_of_namespace(etree.QName(e).namespace)
               in row.modules]
        assert own, f"{row.id} returned nothing of its own models"
        yanglint("data", own, tmp_path / "yanglint")
