"""The device host and its command line: every device of the Madrid network in one process on
loopback ports, crash and restart from disk, `qstrata devices up` and `qstrata fault` acting
over real NETCONF sessions."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import aiohttp
import asyncssh
import pytest
from lxml import etree

from device_checks import validated_get
from devices.host import DeviceHost
from models.ns import KEY_MANAGER as KM_NS
from devices.plant import NS as PLANT_NS
from devices.qkd_node import node_uuid
from models.ns import ETSI_NODE as NODE_NS
from devices.topology import default_topology
from netconf_core import public_key_line
from netconf_core.client import NetconfClient
from tools import cli

MADRID_DEVICES = 1 + 2 + 6 + 6  # the fibre plant, switches, QKD nodes, key managers
SPEED = 20.0  # emulated seconds per real second: outages pass quickly


@pytest.fixture
def host(loop_thread, tmp_path):
    """The Madrid network running in a background event loop, state under tmp_path."""
    running = DeviceHost(default_topology(), state_dir=tmp_path / "state", speed=SPEED, seed=1,
                         insecure_sae_header=True)
    loop_thread.run(running.start())
    yield running
    loop_thread.run(running.stop())


def nc_call(loop_thread, port: int, work, user: str = "admin"):
    """Open a session to the device at `port`, run `await work(nc)` in the host's loop."""
    async def main():
        async with await NetconfClient.connect("127.0.0.1", port, user, user) as nc:
            return await work(nc)
    return loop_thread.run(main())


def km_leaf(node: etree._Element, path: str) -> str | None:
    return node.findtext("/".join(f"{{{KM_NS}}}{step}" for step in path.split("/")))


def wait_until_up(loop_thread, port: int) -> None:
    """Until the device at `port` accepts a NETCONF session again (at most 20 s)."""
    async def main():
        async with asyncio.timeout(20):
            while True:
                try:
                    async with await NetconfClient.connect("127.0.0.1", port, "admin", "admin", timeout=2):
                        return
                except OSError:
                    await asyncio.sleep(0.05)
    loop_thread.run(main())


def test_every_device_of_the_topology_listens_on_its_own_loopback_port(host, loop_thread, tmp_path):
    rows = host.table()
    assert len(rows) == MADRID_DEVICES == len({r.port for r in rows})
    assert {r.kind for r in rows} == {"fibre-plant", "optical-switch", "qkd-node", "key-manager"}
    assert all(r.host == "127.0.0.1" and r.port > 0 and r.up for r in rows)
    kms = [r for r in rows if r.kind == "key-manager"]
    assert sorted(r.id for r in kms) == sorted(k.id for k in default_topology().key_managers)
    assert all(re.fullmatch(r"http://127\.0\.0\.1:\d+", r.etsi014_url) for r in kms)
    assert all(r.etsi014_url is None for r in rows if r.kind != "key-manager")
    for row in rows:  # each answers for its own model, and only its own
        async def work(nc, row=row):
            data = await nc.get_config()
            own = {etree.QName(e).namespace for e in data} - {"urn:ietf:params:xml:ns:yang:ietf-netconf-acm"}
            return own
        namespaces = nc_call(loop_thread, row.port, work)
        assert len(namespaces) == 1, (row.id, namespaces)


def test_a_crashed_key_manager_is_unreachable_then_restarts_on_its_ports_from_disk(host, loop_thread, tmp_path):
    row = next(r for r in host.table() if r.id == "km-distrito")
    async def configure(nc):
        await nc.edit_config(f'<key-manager xmlns="{KM_NS}"><key-pools><key-pool>'
                             f"<link-id>00000000-0000-4000-8000-00000000000d</link-id><peer-km-id>km-norte</peer-km-id>"
                             f"</key-pool></key-pools></key-manager>")
        await nc.copy_config("running", "startup")
        await nc.edit_config(f'<key-manager xmlns="{KM_NS}"><saes><sae><sae-id>sae-extra</sae-id></sae></saes>'
                             f"</key-manager>")  # never saved: lost in the crash
        return etree.tostring(await nc.get_config("startup"))
    startup = nc_call(loop_thread, row.port, configure)
    loop_thread.run(host.crash("km-distrito"))
    assert not next(r for r in host.table() if r.id == "km-distrito").up
    with pytest.raises(OSError):
        nc_call(loop_thread, row.port, lambda nc: nc.get())

    async def etsi014_status():
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{row.etsi014_url}/api/v1/keys/sae-quintin/status",
                                headers={"X-SAE-ID": "sae-distrito"}) as response:
                return response.status
    with pytest.raises(aiohttp.ClientConnectionError):
        asyncio.run(etsi014_status())
    with pytest.raises(ValueError, match="already down"):
        loop_thread.run(host.crash("km-distrito"))

    loop_thread.run(host.restart("km-distrito"))
    again = next(r for r in host.table() if r.id == "km-distrito")
    assert (again.port, again.etsi014_url, again.up) == (row.port, row.etsi014_url, True)
    assert nc_call(loop_thread, row.port, lambda nc: nc.get_config()).find(f"{{{KM_NS}}}key-manager") is not None
    assert etree.tostring(nc_call(loop_thread, row.port, lambda nc: nc.get_config())) == startup
    assert asyncio.run(etsi014_status()) == 401  # serving again: no session between those SAEs
    with pytest.raises(ValueError, match="no device 'km-atocha'"):
        loop_thread.run(host.restart("km-atocha"))


def pinned(row, tmp_path) -> list[str]:
    """`qstrata fault` options reaching the device of `row`, its host key in a known_hosts file."""
    known = tmp_path / f"known_hosts-{row.id}"
    known.write_text(f"[{row.host}]:{row.port} {row.host_key}\n")
    return ["--port", str(row.port), "--known-hosts", str(known), "--stack-file", str(tmp_path / "none.json")]


def test_fault_commands_refuse_a_device_whose_host_key_is_not_the_known_one(host, tmp_path, capsys):
    plant = next(r for r in host.table() if r.kind == "fibre-plant")
    other = public_key_line(asyncssh.generate_private_key("ssh-ed25519"))
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{plant.port} {other}\n")
    assert cli.main(["fault", "cut-span", "norte-distrito", "--port", str(plant.port),
                     "--known-hosts", str(tmp_path / "known_hosts")]) == 2
    assert f"host key of 127.0.0.1:{plant.port} is not trusted" in capsys.readouterr().err
    # with no stack file and no known_hosts file, there is nothing to check the key against
    assert cli.main(["fault", "cut-span", "norte-distrito", "--port", str(plant.port),
                     "--stack-file", str(tmp_path / "none.json")]) == 2
    assert "no host key for" in capsys.readouterr().err


def test_fault_commands_act_on_the_plant_over_netconf(host, loop_thread, tmp_path, capsys):
    plant = next(r for r in host.table() if r.kind == "fibre-plant")
    span = "norte-distrito"

    def status() -> tuple[str, str]:
        async def work(nc):
            data = await validated_get(nc, f'<fibre-plant xmlns="{PLANT_NS}"/>', tmp_path / "checks")
            entry = next(s for s in data.iter(f"{{{PLANT_NS}}}span") if s.findtext(f"{{{PLANT_NS}}}span-id") == span)
            return entry.findtext(f"{{{PLANT_NS}}}status"), entry.findtext(f"{{{PLANT_NS}}}eavesdropper-fraction")
        return nc_call(loop_thread, plant.port, work)

    port = pinned(plant, tmp_path)
    assert cli.main(["fault", "cut-span", span] + port) == 0
    assert status() == ("cut", "0.0")
    assert cli.main(["fault", "repair-span", span] + port) == 0
    assert cli.main(["fault", "eavesdrop", span, "--fraction", "0.25"] + port) == 0
    assert status() == ("up", "0.25")
    assert cli.main(["fault", "clear-eavesdropper", span] + port) == 0
    assert status() == ("up", "0.0")
    assert capsys.readouterr().out.splitlines() == [
        f"span {span} cut", f"span {span} repaired", f"span {span} tapped", f"span {span} no longer tapped"]
    assert cli.main(["fault", "cut-span", "atocha-sol"] + port) == 1
    assert "network 'madrid' has no span 'atocha-sol'" in capsys.readouterr().err


def test_fault_commands_drain_and_restart_a_key_manager_and_refuse_the_wrong_device(host, loop_thread, tmp_path, capsys):
    km = next(r for r in host.table() if r.id == "km-quintin")
    link = "00000000-0000-4000-8000-0000000000a1"
    peer = next(r for r in host.table() if r.id == "km-almagro")
    for here, there in ((km, peer), (peer, km)):
        async def configure(nc, there=there):
            await nc.edit_config(f'<key-manager xmlns="{KM_NS}"><key-pools><key-pool><link-id>{link}</link-id>'
                                 f"<peer-km-id>{there.id}</peer-km-id></key-pool></key-pools></key-manager>")
            await nc.copy_config("running", "startup")
        nc_call(loop_thread, here.port, configure)
    port = pinned(km, tmp_path)
    assert cli.main(["fault", "drain-pool", "km-quintin", link] + port) == 0
    assert f"key manager km-quintin: pool of link {link} drained at both ends" in capsys.readouterr().out

    assert cli.main(["fault", "drain-pool", "km-almagro", link] + port) == 1
    assert "the device is km-quintin, not km-almagro" in capsys.readouterr().err
    assert cli.main(["fault", "restart", "km-almagro"] + port) == 1
    assert cli.main(["fault", "cut-span", "quintin-almagro"] + port) == 1  # a key manager has no plant RPCs
    capsys.readouterr()

    assert cli.main(["fault", "crash", "km-quintin", "--outage", "2"] + port) == 0
    assert "key-manager km-quintin down for 2 s, then back from disk" in capsys.readouterr().out
    wait_until_up(loop_thread, km.port)
    pools = nc_call(loop_thread, km.port, lambda nc: nc.get(("subtree", f'<key-manager xmlns="{KM_NS}"/>')))
    assert km_leaf(pools, "key-manager/key-pools/key-pool/link-id") == link


def test_fault_commands_crash_a_qkd_node_named_by_its_topology_id(host, loop_thread, tmp_path, capsys):
    node = next(r for r in host.table() if r.id == "qkd-norte")
    port = pinned(node, tmp_path)

    def status() -> str:
        async def work(nc):
            data = await nc.get(("subtree", f'<qkd_node xmlns="{NODE_NS}"><qkdn_status/></qkd_node>'))
            return data.findtext(f"{{{NODE_NS}}}qkd_node/{{{NODE_NS}}}qkdn_status").split(":")[-1]
        return nc_call(loop_thread, node.port, work)

    assert cli.main(["fault", "crash", "qkd-quintin"] + port) == 1
    assert f"the device is {node_uuid('qkd-norte')}, not qkd-quintin" in capsys.readouterr().err
    assert cli.main(["fault", "crash", "qkd-norte", "--outage", "3600"] + port) == 0
    assert "qkd-node qkd-norte down for 3600 s, then back from disk" in capsys.readouterr().out
    assert status() == "DOWN"
    assert cli.main(["fault", "restart", node_uuid("qkd-norte")] + port) == 0
    assert f"qkd-node {node_uuid('qkd-norte')} restarting" in capsys.readouterr().out
    deadline = time.monotonic() + 10  # a restart without outage: back at once
    while status() != "OPERATING":
        assert time.monotonic() < deadline, "qkd-norte did not come back"
        time.sleep(0.05)


def test_devices_up_prints_who_listens_where_and_stops_on_sigint(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "tools.cli", "devices", "up", "--speed", "5",
                                "--state-dir", str(tmp_path), "--demo-credentials"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        lines = []
        while not (lines and "Ctrl-C stops" in lines[-1]):
            line = process.stdout.readline()
            assert line, f"devices up ended early: {process.stderr.read()}"
            lines.append(line.rstrip("\n"))
        header, rows = lines[0].split(), [line.split() for line in lines[1:MADRID_DEVICES + 1]]
        assert header == ["DEVICE", "KIND", "NETCONF", "MODULES", "ETSI", "014"]
        assert {row[0] for row in rows} == {"fibre-plant", "sw-concepcion", "sw-norte"} | \
            {n.id for n in default_topology().qkd_nodes} | {k.id for k in default_topology().key_managers}
        assert all(re.fullmatch(r"127\.0\.0\.1:\d+", row[2]) for row in rows)
        assert "admin/admin (read-write), monitor/monitor (read-only)" in lines[-1]
        km_port = int(next(row for row in rows if row[0] == "km-almagro")[2].split(":")[1])

        async def km_id():
            async with await NetconfClient.connect("127.0.0.1", km_port, "monitor", "monitor") as nc:
                data = await nc.get(("subtree", f'<key-manager xmlns="{KM_NS}"><km-id/></key-manager>'))
                return km_leaf(data, "key-manager/km-id")
        assert asyncio.run(km_id()) == "km-almagro"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert out.strip() == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert (tmp_path / "km-almagro" / "datastores" / "startup.xml").exists()  # --state-dir keeps the state


def test_devices_up_reports_a_bad_topology_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [{id: a}]\nspans: [{id: s, a: a, b: nowhere, length_km: 1}]\n")
    assert cli.main(["devices", "up", str(bad)]) == 1
    assert "leads nowhere: no site or switch 'nowhere'" in capsys.readouterr().err


def test_without_a_state_dir_the_host_cleans_up_after_itself(loop_thread):
    host = DeviceHost(default_topology(), insecure_sae_header=True)
    state_dir = host.network.state_dir
    loop_thread.run(host.start())
    assert (state_dir / "km-quintin" / "datastores").is_dir()
    loop_thread.run(host.stop())
    assert not state_dir.exists()
