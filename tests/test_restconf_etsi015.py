"""The ETSI GS QKD 015 contract over RESTCONF: emulated QKD nodes (devices/qkd_node.py, with
RESTCONF on) driven as TeraFlowSDN's QKD driver drives ETSI 015 nodes: the same URLs (a trailing
'/' on each), the same headers (what python-requests sends: Accept */*, Content-Type
application/json, HTTP Basic), the same bodies (top-level names without their module) and the
same reads of the replies (r.json()['qkd_interfaces']['qkd_interface'] ...).

What the node accepts of those departures from RFC 8040 / RFC 7951 is netconf_core.restconf's
`lenient` profile (see its docstring); what it never accepts is invalid data: values keep
their YANG types and the device's own checks, and a client asking for
application/yang-data+json gets RFC 7951, which yanglint validates. The NETCONF view of the
node shows what RESTCONF created."""
from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import random
import subprocess
import uuid
from dataclasses import dataclass

import aiohttp
import pytest
from lxml import etree

from conftest import LoopThread
from devices.base import NetworkContext
from devices.keystore import KeyNetwork
from devices.qkd_node import QkdNodeDevice, node_uuid
from models.ns import ETSI_NODE as NS
from devices.topology import build_twin, default_topology
from devices.twin import Clock
from netconf_core.client import NetconfClient
from netconf_core.models import PROJECT_MODULES
from netconf_core.restconf import RestconfServer
from netconf_core.yangdirs import PROJECT_YANG_DIR, SEARCH_DIRS

BYPASS = str(uuid.UUID(int=0xB1))  # qkd-quintin if1 -- sw-concepcion 1-4 -- qkd-distrito if2
VIRT = str(uuid.UUID(int=0xC1))  # quintin > almagro > norte
QUINTIN, DISTRITO = node_uuid("qkd-quintin"), node_uuid("qkd-distrito")
NODE = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
YANG_JSON = "application/yang-data+json"


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def raise_for_status(self) -> None:  # as requests.Response does
        assert self.status < 400, (self.status, self.body)


class TeraFlowClient:
    """The HTTP calls of TeraFlowSDN's QKD driver (src/device/service/drivers/qkd/Tools2.py):
    requests.get(url, auth=HTTPBasicAuth(user, password)) and requests.post(url, json=data),
    with the headers python-requests sends."""

    def __init__(self, root_url: str, username: str = "admin", password: str = "admin"):
        self.root = root_url
        credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Accept": "*/*", "User-Agent": "python-requests/2.32.3", "Authorization": f"Basic {credentials}"}

    def _call(self, method: str, url: str, data: dict | None = None, headers: dict | None = None) -> Reply:
        out = {**self.headers, **(headers or {})}
        body = None
        if data is not None:
            body = json.dumps(data)
            out.setdefault("Content-Type", "application/json")

        async def go() -> Reply:
            async with aiohttp.ClientSession() as session:
                async with session.request(method, url, data=body, headers=out) as response:
                    return Reply(response.status, dict(response.headers), await response.read())
        return asyncio.run(go())

    def get(self, url: str, **kw) -> Reply:
        return self._call("GET", url, **kw)

    def post(self, url: str, json: dict, **kw) -> Reply:
        return self._call("POST", url, json, **kw)

    # the driver's reads and writes, as it makes them

    def connect(self) -> dict:
        r = self.get(self.root + "/restconf/data/etsi-qkd-sdn-node:qkd_node")
        r.raise_for_status()
        return r.json()

    def fetch_node(self) -> dict:
        r = self.get(self.root + "/restconf/data/etsi-qkd-sdn-node:qkd_node/")
        r.raise_for_status()
        return r.json().get("qkd_node", {})

    def fetch_interfaces(self) -> list[dict]:
        r = self.get(self.root + "/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_interfaces/")
        r.raise_for_status()
        response_data = r.json()
        if isinstance(response_data.get("qkd_interfaces"), dict):
            return response_data.get("qkd_interfaces", {}).get("qkd_interface", [])
        return response_data.get("qkd_interface", [])

    def fetch_links(self) -> list[dict]:
        r = self.get(self.root + "/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links/")
        r.raise_for_status()
        return r.json()["qkd_links"].get("qkd_link", [])

    def fetch_apps(self) -> list[dict]:
        r = self.get(self.root + "/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_applications/")
        r.raise_for_status()
        return r.json().get("qkd_applications", {}).get("qkd_app", [])

    def fetch_capabilities(self) -> dict:
        r = self.get(self.root + "/restconf/data/etsi-qkd-sdn-node:qkd_node/qkdn_capabilities/")
        r.raise_for_status()
        return r.json()

    def create_connectivity_link(self, link_uuid: str, node_id_src: str, interface_id_src, node_id_dst: str,
                                 interface_id_dst, virt_prev_hop: str | None = None,
                                 virt_next_hops: list[str] | None = None, virt_bandwidth: int | None = None) -> Reply:
        qkd_link = {
            "qkdl_id": link_uuid,
            "qkdl_type": "etsi-qkd-node-types:" + ("VIRT" if virt_prev_hop or virt_next_hops else "PHYS"),
            "qkdl_local": {"qkdn_id": node_id_src, "qkdi_id": interface_id_src},
            "qkdl_remote": {"qkdn_id": node_id_dst, "qkdi_id": interface_id_dst},
        }
        if virt_prev_hop or virt_next_hops:
            qkd_link["virt_prev_hop"] = virt_prev_hop
            qkd_link["virt_next_hop"] = virt_next_hops or []
            qkd_link["virt_bandwidth"] = virt_bandwidth
        data = {"qkd_links": {"qkd_link": [qkd_link]}}
        return self.post(self.root + "/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links/", json=data)


# --- the nodes -------------------------------------------------------------------------------------


class Nodes:
    def __init__(self, loop: LoopThread, names: tuple[str, ...]):
        self.loop = loop
        topology = default_topology()
        twin = build_twin(topology, Clock(speed=10.0), random.Random(3))
        context = NetworkContext(twin, KeyNetwork(twin.clock))
        specs = {n.id: n for n in topology.qkd_nodes}
        self.devices = {name: QkdNodeDevice(specs[name], context, restconf_port=0) for name in names}

        async def start():
            for device in self.devices.values():
                device.period = 60.0  # refreshes come with changes; no need to wait for a period
                await device.start()
        loop.run(start())

    def teraflow(self, name: str, **kw) -> TeraFlowClient:
        return TeraFlowClient(self.devices[name].restconf.url, **kw)

    def netconf_links(self, name: str) -> list[etree._Element]:
        async def get():
            device = self.devices[name]
            async with await NetconfClient.connect("127.0.0.1", device.port, "admin", "admin") as nc:
                return await nc.get(("subtree", f'<qkd_node xmlns="{NS}"><qkd_links/></qkd_node>'))
        data = self.loop.run(get())
        return list(data.iter(f"{{{NS}}}qkd_link")) if data is not None else []

    def stop(self) -> None:
        async def stop():
            for device in reversed(list(self.devices.values())):
                await device.stop()
        self.loop.run(stop())


@pytest.fixture
def nodes(loop_thread):
    running = Nodes(loop_thread, ("qkd-quintin", "qkd-distrito", "qkd-almagro"))
    yield running
    running.stop()


def yanglint_json(tmp_path: pathlib.Path, document: dict) -> None:
    path = tmp_path / f"reply-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(document))
    command = ["yanglint", "-t", "get"]
    for directory in SEARCH_DIRS:
        command += ["-p", str(directory)]
    command += [str(PROJECT_YANG_DIR / f"{module}.yang") for module in PROJECT_MODULES]
    result = subprocess.run(command + [str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"yanglint refuses {path}:\n{result.stderr}"


# --- the contract ----------------------------------------------------------------------------------


def test_teraflow_reads_the_node(nodes, tmp_path):
    tfs = nodes.teraflow("qkd-quintin")
    initial = tfs.connect()
    assert initial["qkd_node"]["qkdn_id"] == QUINTIN
    node = tfs.fetch_node()
    assert node["qkdn_id"] == QUINTIN and node["qkdn_location_id"] == "quintin"
    interfaces = tfs.fetch_interfaces()
    assert [i["qkdi_id"] for i in interfaces] == [1, 2]  # uint32: a JSON number, as RFC 7951 has it
    assert [f"{i['qkdi_att_point']['device']}:{i['qkdi_att_point']['port']}" for i in interfaces] == \
        ["quintin:1", "quintin:2"]  # the driver's endpoint uuids
    assert tfs.fetch_links() == []
    assert tfs.fetch_apps() == []
    assert tfs.fetch_capabilities() == {"qkdn_capabilities": {}}
    # the replies to a client that asked for nothing in particular are plain JSON
    reply = tfs.get(tfs.root + NODE + "/qkd_interfaces/")
    assert reply.headers["Content-Type"] == "application/json"


def test_teraflow_creates_a_phys_link_and_reads_it_back(nodes, tmp_path):
    quintin, distrito = nodes.teraflow("qkd-quintin"), nodes.teraflow("qkd-distrito")
    created = quintin.create_connectivity_link(BYPASS, QUINTIN, 1, DISTRITO, 2)
    assert created.status == 201
    assert created.headers["Location"] == f"{quintin.root}{NODE}/qkd_links/qkd_link={BYPASS}"
    assert distrito.create_connectivity_link(BYPASS, DISTRITO, 2, QUINTIN, 1).status == 201
    link, = quintin.fetch_links()
    assert link["qkdl_id"] == BYPASS and link["qkdl_type"] == "etsi-qkd-node-types:PHYS"
    assert link["qkdl_local"] == {"qkdn_id": QUINTIN, "qkdi_id": 1}
    assert link["qkdl_remote"] == {"qkdn_id": DISTRITO, "qkdi_id": 2}
    assert link["qkdl_status"].startswith("etsi-qkd-node-types:")  # the node's own state of it
    # the NETCONF view of the node holds the same link
    netconf, = nodes.netconf_links("qkd-quintin")
    assert netconf.findtext(f"{{{NS}}}qkdl_id") == BYPASS
    assert netconf.findtext(f"{{{NS}}}qkdl_type").endswith(":PHYS")
    assert netconf.findtext(f"{{{NS}}}qkdl_local/{{{NS}}}qkdn_id") == QUINTIN
    assert netconf.findtext(f"{{{NS}}}qkdl_remote/{{{NS}}}qkdi_id") == "2"
    # creating it again is refused, as RFC 8040 has it for a POST of an existing resource
    again = quintin.create_connectivity_link(BYPASS, QUINTIN, 1, DISTRITO, 2)
    assert again.status == 409
    assert again.json()["ietf-restconf:errors"]["error"][0]["error-tag"] == "resource-denied"
    # an RFC 8040 client reading the same node gets RFC 7951, valid per yanglint
    strict = quintin.get(quintin.root + NODE, headers={"Accept": YANG_JSON})
    assert strict.headers["Content-Type"] == YANG_JSON
    document = strict.json()
    assert document["etsi-qkd-sdn-node:qkd_node"]["qkd_links"]["qkd_link"][0]["qkdl_id"] == BYPASS
    yanglint_json(tmp_path, document)
    assert {"qkd_node": document["etsi-qkd-sdn-node:qkd_node"]} == quintin.connect()


def test_teraflow_creates_a_virt_link(nodes, tmp_path):
    quintin = nodes.teraflow("qkd-quintin")
    almagro = node_uuid("qkd-almagro")
    # the first hop has no previous one: the driver sends "virt_prev_hop": null
    created = quintin.create_connectivity_link(VIRT, QUINTIN, None, node_uuid("qkd-norte"), None,
                                               virt_next_hops=[almagro], virt_bandwidth=20_000)
    assert created.status == 201, created.body
    link, = quintin.fetch_links()
    assert link["qkdl_type"] == "etsi-qkd-node-types:VIRT"
    assert link["virt_next_hop"] == [almagro] and link["virt_bandwidth"] == 20_000 and "virt_prev_hop" not in link
    middle = nodes.teraflow("qkd-almagro").create_connectivity_link(
        VIRT, almagro, None, node_uuid("qkd-norte"), None, virt_prev_hop=QUINTIN, virt_next_hops=[node_uuid("qkd-norte")],
        virt_bandwidth=20_000)
    assert middle.status == 201
    assert nodes.netconf_links("qkd-almagro")[0].findtext(f"{{{NS}}}virt_prev_hop") == QUINTIN


def test_the_node_never_takes_invalid_data(nodes, tmp_path):
    tfs = nodes.teraflow("qkd-quintin")

    def refused(reply: Reply, status: int, tag: str) -> str:
        assert reply.status == status, reply.body
        error = reply.json()["ietf-restconf:errors"]["error"][0]
        assert error["error-tag"] == tag
        return error.get("error-message", "")
    # values keep RFC 7951's types: a uint32 is a number, not a string
    refused(tfs.create_connectivity_link(BYPASS, QUINTIN, "1", DISTRITO, "2"), 400, "invalid-value")
    refused(tfs.create_connectivity_link("not-a-uuid", QUINTIN, 1, DISTRITO, 2), 400, "invalid-value")
    # the device's own checks: the local end is this node and one of its interfaces
    message = refused(tfs.create_connectivity_link(BYPASS, DISTRITO, 1, QUINTIN, 2), 400, "invalid-value")
    assert "qkdl_local names node" in message
    message = refused(tfs.create_connectivity_link(BYPASS, QUINTIN, 7, DISTRITO, 2), 400, "invalid-value")
    assert "no configured interface 7" in message
    # names the schema does not have, and state data, are refused as from any client
    unknown = tfs.post(tfs.root + NODE + "/qkd_links/", {"qkd_links": {"qkd_link": [{"qkdl_id": BYPASS,
                                                                                     "qkdl_colour": "red"}]}})
    refused(unknown, 400, "unknown-element")
    state = tfs.post(tfs.root + NODE + "/qkd_links/", {"qkd_links": {"qkd_link": [
        {"qkdl_id": BYPASS, "qkdl_performance": {"skr": 5}}]}})
    assert state.status == 400
    refused(tfs.post(tfs.root + NODE + "/qkd_links/", {"qkd_links": {}}), 400, "malformed-message")
    assert tfs.fetch_links() == []  # nothing of it was written
    # and a body naming a child, as RFC 8040 has it, is fine from the same client
    rfc = tfs.post(tfs.root + NODE + "/qkd_links", {"etsi-qkd-sdn-node:qkd_link": [
        {"qkdl_id": BYPASS, "qkdl_type": "etsi-qkd-node-types:PHYS", "qkdl_local": {"qkdn_id": QUINTIN,
                                                                                    "qkdi_id": 1}}]},
                   headers={"Content-Type": YANG_JSON, "Accept": YANG_JSON})
    assert rfc.status == 201


def test_a_strict_server_refuses_the_departures(nodes, loop_thread):
    """The same node's engine with RESTCONF as RFC 8040 has it (lenient off): each departure of
    the driver is refused with its reason, so the profile is what lets it in."""
    device = nodes.devices["qkd-quintin"]
    strict = RestconfServer(device.server, "127.0.0.1", 0)
    loop_thread.run(strict.start())
    try:
        tfs = TeraFlowClient(strict.url)
        slash = tfs.create_connectivity_link(BYPASS, QUINTIN, 1, DISTRITO, 2)
        assert slash.status == 400 and "trailing" in slash.body.decode()  # .../qkd_links/
        media = tfs.post(tfs.root + NODE + "/qkd_links", {"etsi-qkd-sdn-node:qkd_link": []})
        assert media.status == 415  # Content-Type application/json
        assert tfs.get(tfs.root + NODE + "/qkd_interfaces/").status == 400
        bare = tfs.post(tfs.root + NODE + "/qkd_links", {"qkd_links": {"qkd_link": []}},
                        headers={"Content-Type": YANG_JSON})
        assert bare.status == 400 and "namespace-qualified" in bare.body.decode()
        reply = tfs.get(tfs.root + NODE + "/qkd_interfaces")
        assert reply.status == 200 and "etsi-qkd-sdn-node:qkd_interfaces" in reply.json()  # RFC 7951 names
    finally:
        loop_thread.run(strict.stop())
