"""The device host with RESTCONF on (`DeviceHost(..., restconf=True)`, `qstrata devices up
--restconf`): every QKD node serves ETSI GS QKD 015 over RESTCONF on a port of its own, shown in
the host's table; curl drives an emulated node through it, and NETCONF (ncclient) sees the same
datastore. A restarted node serves RESTCONF again on the same port."""
from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from ncclient import manager

from conftest import LoopThread
from devices.base import DEMO_PASSWORDS, network_users
from devices.host import DeviceHost
from devices.topology import default_topology
from tools.cmd_devices import format_table

NODE = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
JSON = "application/yang-data+json"


def curl(url: str, *args: str) -> tuple[int, bytes]:
    """curl's status and body (status 0: no connection)."""
    run = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20", "-u", "admin:admin",
                          *args, url], capture_output=True)
    body, _, status = run.stdout.rpartition(b"\n")
    return int(status or 0), body


@pytest.fixture
def host():
    loop = LoopThread()
    devices = DeviceHost(default_topology(), seed=1, restconf=True, users=network_users(DEMO_PASSWORDS),
                         insecure_sae_header=True)
    loop.run(devices.start(), timeout=60)
    yield loop, devices
    loop.run(devices.stop(), timeout=60)
    loop.close()


def test_every_qkd_node_serves_restconf_and_the_table_shows_it(host):
    _, devices = host
    rows = devices.table()
    nodes = [r for r in rows if r.kind == "qkd-node"]
    assert nodes and all(r.restconf_url and r.restconf_url.startswith("http://127.0.0.1:") for r in nodes)
    assert all(r.restconf_url is None for r in rows if r.kind != "qkd-node")
    assert len({r.restconf_url for r in nodes}) == len(nodes)  # a port each
    table = format_table(rows).splitlines()
    assert table[0].split()[-1] == "RESTCONF"
    assert any(line.startswith(nodes[0].id) and line.endswith(nodes[0].restconf_url) for line in table)
    without = [r for r in rows if r.kind != "qkd-node"]
    assert "RESTCONF" not in format_table(without)


def test_curl_drives_a_node_through_the_hosts_restconf(host):
    loop, devices = host
    row = next(r for r in devices.table() if r.kind == "qkd-node")
    status, body = curl(row.restconf_url + NODE, "-H", f"Accept: {JSON}")
    assert status == 200, body
    node = json.loads(body)["etsi-qkd-sdn-node:qkd_node"]
    assert node["qkdn_id"] and node["qkd_interfaces"]["qkd_interface"] and node["qkdn_location_id"] != "rack-7"
    status, body = curl(row.restconf_url + NODE, "-X", "PATCH", "-H", f"Content-Type: {JSON}", "--data-binary",
                        json.dumps({"etsi-qkd-sdn-node:qkd_node": {"qkdn_location_id": "rack-7"}}))
    assert status == 204, body
    with manager.connect(host="127.0.0.1", port=row.port, username="admin", password="admin", hostkey_verify=False,
                         allow_agent=False, look_for_keys=False, timeout=30) as m:
        config = m.get_config("running").data_xml
    assert "<qkdn_location_id>rack-7</qkdn_location_id>" in config
    status, body = curl(row.restconf_url + NODE + "/qkdn_location_id", "-H", f"Accept: {JSON}")
    assert status == 200 and json.loads(body) == {"etsi-qkd-sdn-node:qkdn_location_id": "rack-7"}
    assert curl(row.restconf_url + NODE, "-X", "PATCH", "-H", f"Content-Type: {JSON}", "--data-binary",
                json.dumps({"etsi-qkd-sdn-node:qkd_node": {"qkdn_capabilities": {"link_stats_support": "maybe"}}})
                )[0] == 400  # validated as over NETCONF

    loop.run(devices.crash(row.id))
    assert curl(row.restconf_url + NODE)[0] == 0  # down: no connection
    loop.run(devices.restart(row.id), timeout=60)
    restarted = next(r for r in devices.table() if r.id == row.id)
    assert restarted.restconf_url == row.restconf_url
    status, body = curl(row.restconf_url + NODE + "/qkdn_location_id", "-H", f"Accept: {JSON}")
    assert status == 200 and "etsi-qkd-sdn-node:qkdn_location_id" in json.loads(body)  # served again


def test_devices_up_restconf_prints_each_nodes_address_and_serves_it():
    """`qstrata devices up --restconf`: the table's RESTCONF column, and a node answering curl
    at the address it gives."""
    qstrata = str(pathlib.Path(sys.executable).with_name("qstrata"))
    process = subprocess.Popen([qstrata, "devices", "up", "--restconf", "--demo-credentials", "--insecure-sae-header"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while not lines or not lines[-1].startswith("network "):
            assert time.monotonic() < deadline and process.poll() is None, lines
            lines.append(process.stdout.readline().rstrip())
        assert lines[0].split()[-1] == "RESTCONF"
        node = next(line.split() for line in lines if " qkd-node " in line)
        assert node[-1].startswith("http://127.0.0.1:")
        status, body = curl(node[-1] + NODE + "/qkdn_id", "-H", f"Accept: {JSON}")
        assert status == 200 and json.loads(body)["etsi-qkd-sdn-node:qkdn_id"], body
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
