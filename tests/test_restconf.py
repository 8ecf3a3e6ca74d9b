"""RESTCONF (RFC 8040, RFC 8527, RFC 8072) on a real NetconfServer of the engine test model, on
127.0.0.1, driven by two independent HTTP clients: aiohttp's client and the curl binary. Every
JSON and XML body the server returns is validated by yanglint against the models (errors and
YANG Patch status, yang-data structures, through a wrapper module written for the test);
the NETCONF view of the same server (ncclient) shows what RESTCONF wrote, and the other way."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import json
import pathlib
import ssl
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass

import aiohttp
import pytest
import yarl
from lxml import etree
from multidict import CIMultiDict

from conftest import ENGINE_NS, TEST_YANG, LoopThread, start_server
from netconf_core.errors import RPCError
from netconf_core.restconf import HttpLimits, RestconfServer
from netconf_core.schema import PROTOCOL_MODULES
from netconf_core.yangdirs import SEARCH_DIRS

NS = ENGINE_NS
JSON = "application/yang-data+json"
XML = "application/yang-data+xml"
RESTCONF_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf"
PATCH_NS = "urn:ietf:params:xml:ns:yang:ietf-yang-patch"
CHECK_NS = "urn:qstrata:yang:qs-restconf-check"
ADMIN = ("admin", "admin-pw")
READER = ("reader", "reader-pw")
IFS = "/restconf/data/qs-engine-test:interfaces"
SYSTEM = "/restconf/data/qs-engine-test:system"

# yang-data structures (ietf-restconf errors, ietf-yang-patch status) are not data trees: yanglint
# validates them as the content of containers of this module, which uses their groupings.
CHECK_MODULE = f"""module qs-restconf-check {{
  yang-version 1.1;
  namespace "{CHECK_NS}";
  prefix qrc;
  import ietf-restconf {{ prefix rc; }}
  import ietf-yang-patch {{ prefix ypatch; }}
  container errors-doc {{ config false; uses rc:errors; }}
  container patch-doc {{ config false; uses ypatch:yang-patch-status; }}
}}
"""


# --- clients ------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def xml(self) -> etree._Element:
        return etree.fromstring(self.body)

    def error_tags(self) -> list[str]:
        if self.headers.get("Content-Type", "").endswith("xml"):
            return [e.text for e in self.xml().iter(f"{{{RESTCONF_NS}}}error-tag")]
        return [e["error-tag"] for e in self.json()["ietf-restconf:errors"]["error"]]


def basic(user: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()


class Http:
    """aiohttp's client, one request at a time from the test's thread (the server runs on a
    loop of its own)."""

    def __init__(self, base: str, ssl_context: ssl.SSLContext | None = None):
        self.base = base
        self.ssl_context = ssl_context

    def __call__(self, method: str, path: str, body: bytes | str | dict | None = None, *,
                 user: tuple[str, str] | None = ADMIN, accept: str | None = JSON, ctype: str | None = None,
                 headers: dict[str, str] | None = None) -> Reply:
        out = dict(headers or {})
        if user is not None:
            out["Authorization"] = basic(user)
        if accept is not None:
            out["Accept"] = accept
        if isinstance(body, dict):
            body = json.dumps(body)
            ctype = ctype or JSON
        if body is not None:
            out["Content-Type"] = ctype or (XML if body.lstrip().startswith("<") else JSON)

        async def go() -> Reply:
            async with aiohttp.ClientSession() as session:
                async with session.request(method, yarl.URL(self.base + path, encoded=True), data=body, headers=out,
                                           ssl=self.ssl_context if self.ssl_context else True) as response:
                    return Reply(response.status, CIMultiDict(response.headers), await response.read())
        return asyncio.run(go())


def curl(*args: str, cafile: pathlib.Path | None = None) -> Reply:
    """The curl binary: status, headers and body of one request."""
    command = ["curl", "-s", "-S", "-i", "--max-time", "20", *args]
    if cafile is not None:
        command += ["--cacert", str(cafile)]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = CIMultiDict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Reply(int(lines[0].split()[1]), headers, body)


# --- yanglint ------------------------------------------------------------------------------------


def _module_file(name: str) -> str:
    for directory in [TEST_YANG, *SEARCH_DIRS]:
        found = sorted(pathlib.Path(directory).glob(f"{name}.yang")) or \
            sorted(pathlib.Path(directory).glob(f"{name}@*.yang"))
        if found:
            return str(found[-1])
    raise FileNotFoundError(name)


MODULE_FILES = [_module_file(m) for m in (*PROTOCOL_MODULES, "qs-engine-test")]


def yanglint(tmp_path: pathlib.Path, content: bytes, fmt: str, kind: str = "get") -> None:
    """Fail unless yanglint accepts `content` (data nodes, JSON or XML) as a `kind` document."""
    check = tmp_path / "qs-restconf-check.yang"
    if not check.exists():
        check.write_text(CHECK_MODULE)
    path = tmp_path / f"body-{len(list(tmp_path.iterdir()))}.{fmt}"
    path.write_bytes(content)
    command = ["yanglint", "-t", kind, "-p", str(tmp_path), "-p", str(TEST_YANG)]
    for directory in SEARCH_DIRS:
        command += ["-p", str(directory)]
    result = subprocess.run(command + MODULE_FILES + [str(check), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"yanglint refuses {path}:\n{content.decode()}\n{result.stderr}"


def valid_datastore(tmp_path, reply: Reply, kind: str = "get") -> None:
    """A datastore resource's body ({"ietf-restconf:data": ...} or <data>): its data nodes."""
    if reply.headers["Content-Type"] == JSON:
        yanglint(tmp_path, json.dumps(reply.json()["ietf-restconf:data"]).encode(), "json", kind)
    else:
        root = reply.xml()
        assert root.tag == f"{{{RESTCONF_NS}}}data"
        yanglint(tmp_path, b"".join(etree.tostring(c) for c in root) or b"", "xml", kind)


def valid_resource(tmp_path, reply: Reply, ancestors: list[tuple[str, dict | None]], kind: str = "get") -> None:
    """A data resource's body, inside its ancestors: (module:name, list keys or None) from the top."""
    if reply.headers["Content-Type"].startswith("application/json") or reply.headers["Content-Type"] == JSON:
        (name, value), = reply.json().items()
        for ancestor, keys in reversed(ancestors):
            module = ancestor.split(":")[0]
            inner = {(name.split(":", 1)[1] if name.startswith(module + ":") else name): value}
            name, value = ancestor, ([{**keys, **inner}] if keys is not None else inner)
        yanglint(tmp_path, json.dumps({name: value}).encode(), "json", kind)
    else:
        element = reply.xml()
        for ancestor, keys in reversed(ancestors):
            module, local = ancestor.split(":")
            namespace = NS if module == "qs-engine-test" else None
            parent = etree.Element(f"{{{namespace}}}{local}", nsmap={None: namespace})
            for key, key_value in (keys or {}).items():
                etree.SubElement(parent, f"{{{namespace}}}{key}").text = str(key_value)
            parent.append(element)
            element = parent
        yanglint(tmp_path, etree.tostring(element), "xml", kind)


def valid_yang_data(tmp_path, reply: Reply) -> None:
    """An ietf-restconf:errors or ietf-yang-patch:yang-patch-status body."""
    if reply.headers["Content-Type"] == JSON:
        (name, value), = reply.json().items()
        doc = {"ietf-restconf:errors": "qs-restconf-check:errors-doc",
               "ietf-yang-patch:yang-patch-status": "qs-restconf-check:patch-doc"}[name]
        yanglint(tmp_path, json.dumps({doc: {name.split(":")[1]: value}}).encode(), "json")
    else:
        root = reply.xml()
        doc = {f"{{{RESTCONF_NS}}}errors": "errors-doc", f"{{{PATCH_NS}}}yang-patch-status": "patch-doc"}[root.tag]
        for element in root.iter():
            if etree.QName(element).namespace in (RESTCONF_NS, PATCH_NS):
                element.tag = f"{{{CHECK_NS}}}{etree.QName(element).localname}"
        # (as text: lxml mis-binds a renamed subtree moved under a new default namespace)
        yanglint(tmp_path, f'<{doc} xmlns="{CHECK_NS}">'.encode() + etree.tostring(root) + f"</{doc}>".encode(), "xml")


def assert_error(tmp_path, reply: Reply, status: int, tag: str) -> dict:
    """The reply is an ietf-restconf:errors with this status and error-tag, valid per yanglint."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.error_tags()[:1] == [tag], reply.body
    valid_yang_data(tmp_path, reply)
    if reply.headers["Content-Type"] == JSON:
        return reply.json()["ietf-restconf:errors"]["error"][0]
    return {etree.QName(c).localname: c.text for c in reply.xml()[0]}


# --- the server ------------------------------------------------------------------------------------


@dataclass
class Served:
    loop: LoopThread
    running: object  # conftest.RunningServer
    restconf: RestconfServer
    http: Http
    commits: list  # (before, after) of every commit the change handler saw

    @property
    def server(self):
        return self.running.server

    def run(self, coro):
        return self.loop.run(coro)

    def curl(self, method: str, path: str, *args: str, user: tuple[str, str] = ADMIN) -> Reply:
        return curl("-X", method, "-u", f"{user[0]}:{user[1]}", *args, self.restconf.url + path)


def _state(server):
    async def state():
        root = etree.Element(f"{{{BASE}}}data", nsmap={None: BASE})
        system = etree.SubElement(root, f"{{{NS}}}system", nsmap={None: NS})
        etree.SubElement(system, f"{{{NS}}}uptime").text = "42"
        interfaces = etree.SubElement(root, f"{{{NS}}}interfaces", nsmap={None: NS})
        for name in server.datastores["running"].xpath("//e:interface/e:name/text()", namespaces={"e": NS}):
            entry = etree.SubElement(interfaces, f"{{{NS}}}interface")
            etree.SubElement(entry, f"{{{NS}}}name").text = name
            etree.SubElement(entry, f"{{{NS}}}oper-status").text = "up"
        return root
    return state


BASE = "urn:ietf:params:xml:ns:netconf:base:1.0"


@pytest.fixture
def rc(loop_thread, engine_schema, tmp_path):
    running = start_server(loop_thread, engine_schema, datastore_dir=tmp_path / "ds")
    server = running.server
    commits = []

    async def watch(before, after):
        refused = after.find(f".//{{{NS}}}hostname")
        if refused is not None and refused.text == "refused":
            raise RPCError("invalid-value", "this device refuses hostname 'refused'", path="/qs-engine-test:system/hostname")
        commits.append((before, after))

    async def ping(session, operation, context):
        count = int(operation.findtext(f"{{{NS}}}count") or 1)
        received = etree.Element(f"{{{NS}}}received")
        received.text = str(count)
        return [received]

    async def reset(session, action, context):
        done = etree.Element(f"{{{NS}}}done")
        done.text = "true"
        return [done] if action.findtext(f"{{{NS}}}delay") != "0" else None

    async def make():
        server.on_change(watch)
        server.add_state_provider(_state(server))
        server.add_rpc("/qs-engine-test:ping", ping)
        server.add_rpc("/qs-engine-test:interfaces/interface/reset", reset)
        restconf = RestconfServer(server, "127.0.0.1", 0)
        await restconf.start()
        return restconf
    restconf = loop_thread.run(make())
    served = Served(loop_thread, running, restconf, Http(restconf.url), commits)
    yield served
    loop_thread.run(restconf.stop())
    loop_thread.run(server.stop())


def load(rc: Served) -> None:
    """Two interfaces and a route, written over RESTCONF."""
    reply = rc.http("PUT", IFS, {"qs-engine-test:interfaces": {
        "interface": [{"name": "eth0", "vlan": 10, "speed-mbps": 1000}, {"name": "eth1", "vlan": 11}],
        "route": [{"prefix": "10.0.0.0/8", "out-interface": "eth0"}]}})
    assert reply.status in (201, 204), reply.body
    assert rc.http("PUT", SYSTEM, {"qs-engine-test:system": {"hostname": "r1", "dns": ["1.1.1.1"]}}).status in (201, 204)


def netconf_config(rc: Served) -> etree._Element:
    with rc.running.connect() as m:
        return etree.fromstring(m.get_config("running").data_xml.encode())


# --- discovery -------------------------------------------------------------------------------------


def test_host_meta_root_and_yang_library_version(rc, tmp_path):
    meta = curl(rc.restconf.url + "/.well-known/host-meta")
    assert meta.status == 200 and meta.headers["Content-Type"] == "application/xrd+xml"
    link = etree.fromstring(meta.body).find("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")
    assert link.get("rel") == "restconf" and link.get("href") == "/restconf"
    root = rc.http("GET", "/restconf")
    assert root.status == 200 and root.json() == {"ietf-restconf:restconf": {
        "data": {}, "operations": {}, "yang-library-version": "2019-01-04"}}
    assert rc.http("GET", "/restconf/yang-library-version").json() == {"ietf-restconf:yang-library-version": "2019-01-04"}
    xml = rc.http("GET", "/restconf/yang-library-version", accept=XML)
    assert xml.headers["Content-Type"] == XML and xml.xml().text == "2019-01-04"
    operations = rc.http("GET", "/restconf/operations").json()["ietf-restconf:operations"]
    assert operations["qs-engine-test:ping"] == [None]
    xml_ops = rc.http("GET", "/restconf/operations", accept=XML).xml()
    assert xml_ops.find(f"{{{NS}}}ping") is not None
    options = rc.http("OPTIONS", IFS)
    assert options.status == 200 and "PATCH" in options.headers["Allow"]
    assert "application/yang-patch+json" in options.headers["Accept-Patch"]


def test_monitoring_is_readable_over_restconf_and_netconf(rc, tmp_path):
    reply = rc.http("GET", "/restconf/data/ietf-restconf-monitoring:restconf-state")
    assert reply.status == 200
    valid_resource(tmp_path, reply, [])
    state = reply.json()["ietf-restconf-monitoring:restconf-state"]
    assert "urn:ietf:params:restconf:capability:yang-patch:1.0" in state["capabilities"]["capability"]
    stream, = state["streams"]["stream"]
    assert stream["name"] == "NETCONF" and {a["encoding"] for a in stream["access"]} == {"json", "xml"}
    assert f"{rc.restconf.url}/restconf/streams/NETCONF/json" in {a["location"] for a in stream["access"]}
    with rc.running.connect() as m:
        data = etree.fromstring(m.get(filter=("subtree", '<restconf-state xmlns="urn:ietf:params:xml:ns:yang:'
                                                     'ietf-restconf-monitoring"/>')).data_xml.encode())
    assert data.find(".//{urn:ietf:params:xml:ns:yang:ietf-restconf-monitoring}capability") is not None


def test_yang_library_names_no_file_of_this_host(rc, tmp_path):
    """RFC 8525 location and RFC 7895 schema are optional URLs a client could fetch: libyang's
    file:// paths of this machine are not served, over RESTCONF or NETCONF; get-schema (which
    netconf-state names: location NETCONF) serves the text."""
    library = rc.http("GET", "/restconf/data/ietf-yang-library:yang-library")
    assert library.status == 200
    valid_resource(tmp_path, library, [])
    modules = [m for s in library.json()["ietf-yang-library:yang-library"]["module-set"] for m in s["module"]]
    assert "qs-engine-test" in {m["name"] for m in modules} and all("location" not in m for m in modules)
    state = rc.http("GET", "/restconf/data/ietf-yang-library:modules-state").json()
    assert all("schema" not in m for m in state["ietf-yang-library:modules-state"]["module"])
    root = str(pathlib.Path(__file__).resolve().parents[1])
    with rc.running.connect() as m:
        seen = "".join(m.get(filter=("subtree", f'<{top} xmlns="urn:ietf:params:xml:ns:yang:ietf-yang-library"/>'))
                       .data_xml for top in ("yang-library", "modules-state"))
        assert "<module-set>" in seen and "<conformance-type>" in seen
        assert "module qs-engine-test" in m.get_schema("qs-engine-test").data
    for text in (library.body.decode(), json.dumps(state), seen):
        assert "file:" not in text and root not in text and "/usr/share" not in text


# --- reading ------------------------------------------------------------------------------------------


def test_get_datastore_and_resources_in_json_and_xml_valid_per_yanglint(rc, tmp_path):
    load(rc)
    for accept in (JSON, XML):
        whole = rc.http("GET", "/restconf/data", accept=accept)
        assert whole.status == 200 and whole.headers["Content-Type"] == accept
        valid_datastore(tmp_path, whole)
        config = rc.http("GET", "/restconf/data?content=config", accept=accept)
        valid_datastore(tmp_path, config, "getconfig")
        entry = rc.http("GET", IFS + "/interface=eth0", accept=accept)
        assert entry.status == 200
        valid_resource(tmp_path, entry, [("qs-engine-test:interfaces", None)])
        leaf = rc.http("GET", IFS + "/interface=eth0/vlan", accept=accept)
        valid_resource(tmp_path, leaf, [("qs-engine-test:interfaces", None), ("qs-engine-test:interface",
                                                                               {"name": "eth0"})])
    entry = rc.http("GET", IFS + "/interface=eth0").json()
    assert entry == {"qs-engine-test:interface": [{"name": "eth0", "vlan": 10, "speed-mbps": 1000,
                                                    "oper-status": "up"}]}
    assert rc.http("GET", IFS + "/interface=eth0/vlan").json() == {"qs-engine-test:vlan": 10}
    assert rc.http("GET", SYSTEM + "/dns=1.1.1.1").json() == {"qs-engine-test:dns": ["1.1.1.1"]}
    xml = rc.http("GET", IFS + "/interface=eth1", accept=XML).xml()
    assert xml.tag == f"{{{NS}}}interface" and xml.findtext(f"{{{NS}}}vlan") == "11"
    # the same data as NETCONF's view
    data = netconf_config(rc)
    assert data.find(f".//{{{NS}}}interface/{{{NS}}}vlan").text == "10"


def test_get_errors_404_400_and_head(rc, tmp_path):
    load(rc)
    assert_error(tmp_path, rc.http("GET", IFS + "/interface=eth9"), 404, "invalid-value")
    assert_error(tmp_path, rc.http("GET", "/restconf/data/qs-engine-test:nowhere"), 400, "unknown-element")
    assert_error(tmp_path, rc.http("GET", "/restconf/data/no-such-module:x"), 400, "unknown-namespace")
    assert_error(tmp_path, rc.http("GET", IFS + "/interface"), 400, "invalid-value")  # a list needs its keys
    assert_error(tmp_path, rc.http("GET", IFS + "/interface=eth0/vlan/x"), 400, "invalid-value")
    assert_error(tmp_path, rc.http("GET", "/restconf/nothing-here"), 404, "invalid-value")
    head = rc.http("HEAD", IFS)
    assert head.status == 200 and head.body == b"" and head.headers["Content-Type"] == JSON
    assert int(head.headers["Content-Length"]) == len(rc.http("GET", IFS).body)


def test_depth_fields_content(rc, tmp_path):
    load(rc)
    assert rc.http("GET", IFS + "?depth=1").json() == {"qs-engine-test:interfaces": {}}
    two = rc.http("GET", IFS + "?depth=2").json()["qs-engine-test:interfaces"]
    assert two["interface"] == [{"name": "eth0"}, {"name": "eth1"}]  # keys stay: entries remain addressable
    fields = rc.http("GET", IFS + "?fields=interface(name;vlan)")
    assert fields.json() == {"qs-engine-test:interfaces": {"interface": [{"name": "eth0", "vlan": 10},
                                                                          {"name": "eth1", "vlan": 11}]}}
    valid_resource(tmp_path, fields, [])
    top = rc.http("GET", "/restconf/data?fields=qs-engine-test:system/hostname;qs-engine-test:interfaces/route")
    assert top.json() == {"ietf-restconf:data": {"qs-engine-test:system": {"hostname": "r1"},
                                                 "qs-engine-test:interfaces": {"route": [
                                                     {"prefix": "10.0.0.0/8", "out-interface": "eth0"}]}}}
    state = rc.http("GET", IFS + "/interface=eth0?content=nonconfig").json()
    assert state == {"qs-engine-test:interface": [{"name": "eth0", "oper-status": "up"}]}
    config = rc.http("GET", IFS + "/interface=eth0?content=config").json()
    assert "oper-status" not in config["qs-engine-test:interface"][0]
    assert rc.http("GET", SYSTEM + "?content=nonconfig").json() == {"qs-engine-test:system": {"uptime": 42}}
    assert_error(tmp_path, rc.http("GET", IFS + "?depth=0"), 400, "invalid-value")
    assert_error(tmp_path, rc.http("GET", IFS + "?fields=nothing"), 400, "unknown-element")
    assert_error(tmp_path, rc.http("GET", IFS + "?content=some"), 400, "invalid-value")
    assert_error(tmp_path, rc.http("GET", IFS + "?depth=1&depth=2"), 400, "invalid-value")
    assert_error(tmp_path, rc.http("GET", IFS + "?bogus=1"), 400, "invalid-value")
    filtered = assert_error(tmp_path, rc.http("GET", IFS + "?filter=/x"), 400, "invalid-value")
    assert "event streams" in filtered["error-message"]
    assert_error(tmp_path, rc.http("GET", IFS + "?start-time=2026-01-01T00:00:00Z"), 400, "invalid-value")


def test_with_defaults(rc, tmp_path):
    load(rc)
    assert "mtu" not in rc.http("GET", SYSTEM).json()["qs-engine-test:system"]
    everything = rc.http("GET", SYSTEM + "?with-defaults=report-all")
    assert everything.json()["qs-engine-test:system"]["mtu"] == 1500
    valid_resource(tmp_path, everything, [])
    tagged = rc.http("GET", SYSTEM + "?with-defaults=report-all-tagged").json()["qs-engine-test:system"]
    assert tagged["@mtu"] == {"ietf-netconf-with-defaults:default": True} and "@hostname" not in tagged
    xml = rc.http("GET", SYSTEM + "?with-defaults=report-all-tagged", accept=XML).xml()
    assert xml.find(f"{{{NS}}}mtu").get("{urn:ietf:params:xml:ns:netconf:default:1.0}default") == "true"
    assert rc.http("PATCH", SYSTEM, {"qs-engine-test:system": {"mtu": 1500}}).status == 204
    assert "mtu" in rc.http("GET", SYSTEM).json()["qs-engine-test:system"]  # explicit: set, so reported
    assert "mtu" not in rc.http("GET", SYSTEM + "?with-defaults=trim").json()["qs-engine-test:system"]
    assert_error(tmp_path, rc.http("GET", SYSTEM + "?with-defaults=all"), 400, "invalid-value")


# --- writing ------------------------------------------------------------------------------------------


def test_post_put_patch_delete_lifecycle(rc, tmp_path):
    load(rc)
    created = rc.http("POST", IFS, {"qs-engine-test:interface": [{"name": "eth/2", "vlan": 12}]})
    assert created.status == 201 and created.body == b""
    assert created.headers["Location"] == f"{rc.restconf.url}{IFS}/interface=eth%2F2"
    assert created.headers["ETag"] and created.headers["Last-Modified"]
    assert rc.http("GET", IFS + "/interface=eth%2F2/vlan").json() == {"qs-engine-test:vlan": 12}
    again = assert_error(tmp_path, rc.http("POST", IFS, {"qs-engine-test:interface": [{"name": "eth/2"}]}),
                         409, "resource-denied")
    assert again["error-path"] == "/qs-engine-test:interfaces/interface[name='eth/2']"
    # PUT replaces (204) or creates (201)
    replaced = rc.http("PUT", IFS + "/interface=eth%2F2", {"qs-engine-test:interface": [{"name": "eth/2"}]})
    assert replaced.status == 204
    assert rc.http("GET", IFS + "/interface=eth%2F2").json() == {
        "qs-engine-test:interface": [{"name": "eth/2", "oper-status": "up"}]}
    assert rc.http("PUT", IFS + "/interface=eth3", {"qs-engine-test:interface": [{"name": "eth3"}]}).status == 201
    mismatch = rc.http("PUT", IFS + "/interface=eth3", {"qs-engine-test:interface": [{"name": "eth4"}]})
    assert_error(tmp_path, mismatch, 400, "invalid-value")
    # PATCH merges, and needs the target to exist
    assert rc.http("PATCH", IFS + "/interface=eth3", {"qs-engine-test:interface": [{"name": "eth3",
                                                                                     "vlan": 13}]}).status == 204
    assert rc.http("GET", IFS + "/interface=eth3?content=config").json() == {
        "qs-engine-test:interface": [{"name": "eth3", "vlan": 13}]}
    assert_error(tmp_path, rc.http("PATCH", IFS + "/interface=eth9", {"qs-engine-test:interface": [{"name": "eth9"}]}),
                 404, "invalid-value")
    assert rc.http("PATCH", SYSTEM + "/hostname", {"qs-engine-test:hostname": "r2"}).status == 204
    # DELETE
    assert rc.http("DELETE", IFS + "/interface=eth3").status == 204
    assert_error(tmp_path, rc.http("DELETE", IFS + "/interface=eth3"), 404, "invalid-value")
    assert rc.http("DELETE", SYSTEM + "/dns=1.1.1.1").status == 204
    assert rc.http("DELETE", SYSTEM + "/hostname").status == 204
    assert rc.http("GET", SYSTEM + "?content=config").json() == {"qs-engine-test:system": {}}
    assert_error(tmp_path, rc.http("DELETE", IFS + "/interface=eth0/name"), 400, "invalid-value")  # a key
    # the whole datastore: PATCH merges, PUT replaces
    assert rc.http("PATCH", "/restconf/data", {"ietf-restconf:data": {
        "qs-engine-test:system": {"hostname": "whole"}}}).status == 204
    assert rc.http("GET", SYSTEM + "/hostname").json() == {"qs-engine-test:hostname": "whole"}
    nacm = rc.http("GET", "/restconf/data/ietf-netconf-acm:nacm?content=config").json()
    assert rc.http("PUT", "/restconf/data", {"ietf-restconf:data": {
        "qs-engine-test:system": {"hostname": "only"}, **nacm}}).status == 204
    assert rc.http("GET", IFS + "?content=config").status == 200
    assert rc.http("GET", IFS + "?content=config").json() == {"qs-engine-test:interfaces": {}}
    assert rc.http("GET", SYSTEM + "/hostname").json() == {"qs-engine-test:hostname": "only"}
    assert_error(tmp_path, rc.http("DELETE", "/restconf/data"), 405, "operation-not-supported")
    # each change went through the commit path, seen by the change handler and by NETCONF
    assert rc.commits and netconf_config(rc).find(f".//{{{NS}}}hostname").text == "only"


def test_xml_bodies(rc, tmp_path):
    load(rc)
    body = f'<interface xmlns="{NS}"><name>x1</name><vlan>21</vlan></interface>'
    created = rc.http("POST", IFS, body, accept=XML)
    assert created.status == 201 and created.headers["Location"].endswith("/interface=x1")
    duplicate = rc.http("POST", IFS, body, accept=XML)
    error = assert_error(tmp_path, duplicate, 409, "resource-denied")
    assert error["error-path"] == "/qs-engine-test:interfaces/qs-engine-test:interface[qs-engine-test:name='x1']"
    assert rc.http("PATCH", IFS + "/interface=x1", f'<interface xmlns="{NS}"><name>x1</name><speed-mbps>40'
                                                  '</speed-mbps></interface>').status == 204
    reply = rc.http("GET", IFS + "/interface=x1?content=config", accept=XML)
    assert reply.xml().findtext(f"{{{NS}}}speed-mbps") == "40"
    valid_resource(tmp_path, reply, [("qs-engine-test:interfaces", None)], "getconfig")
    whole = f'<data xmlns="{RESTCONF_NS}"><system xmlns="{NS}"><hostname>xml</hostname></system></data>'
    assert rc.http("PATCH", "/restconf/data", whole).status == 204
    assert rc.http("GET", SYSTEM + "/hostname").json() == {"qs-engine-test:hostname": "xml"}
    assert_error(tmp_path, rc.http("POST", IFS, "<interface", accept=XML), 400, "malformed-message")


def test_invalid_edits_change_nothing(rc, tmp_path):
    load(rc)
    etag = rc.http("GET", "/restconf/data?content=config").headers["ETag"]
    commits = len(rc.commits)
    must = assert_error(tmp_path, rc.http("PATCH", IFS + "/interface=eth0", {"qs-engine-test:interface": [
        {"name": "eth0", "speed-mbps": 5}]}), 500, "operation-failed")
    assert must["error-app-tag"] == "must-violation"
    assert must["error-path"] == "/qs-engine-test:interfaces/interface[name='eth0']/speed-mbps"
    assert must["error-message"] == "speed must be at least 10 Mb/s"
    unique = assert_error(tmp_path, rc.http("POST", IFS, {"qs-engine-test:interface": [{"name": "eth5", "vlan": 10}]}),
                          500, "operation-failed")
    assert unique["error-app-tag"] == "data-not-unique"
    assert_error(tmp_path, rc.http("POST", IFS, {"qs-engine-test:route": [{"prefix": "2.0.0.0/8",
                                                                           "out-interface": "nowhere"}]}),
                 409, "data-missing")
    typed = assert_error(tmp_path, rc.http("PATCH", IFS + "/interface=eth0", {"qs-engine-test:interface": [
        {"name": "eth0", "vlan": "10"}]}), 400, "invalid-value")  # RFC 7951: a uint16 is a JSON number
    assert typed["error-path"] == "/qs-engine-test:interfaces/interface[name='eth0']/vlan"
    assert_error(tmp_path, rc.http("PATCH", IFS + "/interface=eth0", {"qs-engine-test:interface": [
        {"name": "eth0", "oper-status": "up"}]}), 400, "unknown-element")  # state data is not written
    assert_error(tmp_path, rc.http("PUT", IFS, {"interfaces": {}}), 400, "malformed-message")  # RFC 7951 section 4
    assert_error(tmp_path, rc.http("PUT", IFS, "{not json"), 400, "malformed-message")
    vetoed = assert_error(tmp_path, rc.http("PATCH", SYSTEM, {"qs-engine-test:system": {"hostname": "refused"}}),
                          400, "invalid-value")
    assert vetoed["error-message"] == "this device refuses hostname 'refused'"
    assert rc.http("GET", "/restconf/data?content=config").headers["ETag"] == etag
    assert len(rc.commits) == commits


def test_curl_get_put_patch_delete_and_error(rc, tmp_path):
    load(rc)
    got = rc.curl("GET", SYSTEM, "-H", f"Accept: {JSON}")
    assert got.status == 200 and got.headers["Content-Type"] == JSON
    assert got.json()["qs-engine-test:system"]["hostname"] == "r1"
    valid_resource(tmp_path, got, [])
    put = rc.curl("PUT", IFS + "/interface=c1", "-H", f"Content-Type: {JSON}",
                  "--data", json.dumps({"qs-engine-test:interface": [{"name": "c1", "vlan": 31}]}))
    assert put.status == 201
    patch = rc.curl("PATCH", IFS + "/interface=c1", "-H", f"Content-Type: {XML}",
                    "--data", f'<interface xmlns="{NS}"><name>c1</name><vlan>32</vlan></interface>')
    assert patch.status == 204
    xml = rc.curl("GET", IFS + "/interface=c1/vlan", "-H", f"Accept: {XML}")
    assert xml.status == 200 and xml.xml().text == "32"
    valid_resource(tmp_path, xml, [("qs-engine-test:interfaces", None), ("qs-engine-test:interface", {"name": "c1"})])
    assert rc.curl("DELETE", IFS + "/interface=c1").status == 204
    missing = rc.curl("DELETE", IFS + "/interface=c1", "-H", f"Accept: {XML}")
    assert missing.headers["Content-Type"] == XML
    assert_error(tmp_path, missing, 404, "invalid-value")
    denied = rc.curl("PUT", SYSTEM + "/hostname", "-H", f"Content-Type: {JSON}", "--data",
                     '{"qs-engine-test:hostname": "x"}', user=READER)
    assert_error(tmp_path, denied, 403, "access-denied")
    anonymous = curl(rc.restconf.url + SYSTEM)
    assert_error(tmp_path, anonymous, 401, "access-denied")
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")


def test_nacm_and_authentication(rc, tmp_path):
    load(rc)
    assert rc.http("GET", IFS, user=READER).status == 200
    for method, path, body in [("PUT", SYSTEM, {"qs-engine-test:system": {"hostname": "r"}}),
                               ("POST", IFS, {"qs-engine-test:interface": [{"name": "r"}]}),
                               ("PATCH", IFS + "/interface=eth0", {"qs-engine-test:interface": [{"name": "eth0",
                                                                                                 "vlan": 99}]}),
                               ("DELETE", IFS + "/interface=eth1", None),
                               ("POST", "/restconf/operations/qs-engine-test:ping",
                                {"qs-engine-test:input": {"host": "h"}}),
                               ("POST", IFS + "/interface=eth0/reset", None)]:
        denied = assert_error(tmp_path, rc.http(method, path, body, user=READER), 403, "access-denied")
        assert "reader" in denied["error-message"]
    assert rc.http("GET", IFS + "/interface=eth0/vlan").json() == {"qs-engine-test:vlan": 10}
    # the NACM rules themselves are not readable by the reader (default-deny-all nodes)
    hidden = rc.http("GET", "/restconf/data/ietf-netconf-acm:nacm/groups", user=READER)
    assert_error(tmp_path, hidden, 403, "access-denied")
    for user in [None, ("admin", "wrong"), ("nobody", "x")]:
        refused = rc.http("GET", IFS, user=user)
        assert_error(tmp_path, refused, 401, "access-denied")
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="restconf", charset="UTF-8"'
    assert_error(tmp_path, rc.http("GET", IFS, headers={"Authorization": "Basic !!"}, user=None), 401,
                 "access-denied")


def test_insert_and_point_in_ordered_by_user_lists(rc, tmp_path):
    load(rc)
    def route(prefix: str, query: str = "") -> Reply:
        return rc.http("POST", IFS + query, {"qs-engine-test:route": [{"prefix": prefix, "out-interface": "eth0"}]})
    assert route("30.0.0.0/8").status == 201  # last, by default
    assert route("1.0.0.0/8", "?insert=first").status == 201
    point = urllib.parse.quote("/qs-engine-test:interfaces/route=10.0.0.0%2F8", safe="/:=%")
    assert route("20.0.0.0/8", f"?insert=after&point={point}").status == 201
    assert route("5.0.0.0/8", f"?insert=before&point={point}").status == 201
    prefixes = [r["prefix"] for r in rc.http("GET", IFS + "?fields=route(prefix)").json()
                ["qs-engine-test:interfaces"]["route"]]
    assert prefixes == ["1.0.0.0/8", "5.0.0.0/8", "10.0.0.0/8", "20.0.0.0/8", "30.0.0.0/8"]
    assert rc.http("POST", SYSTEM + "?insert=first", {"qs-engine-test:dns": ["0.0.0.0"]}).status == 201
    assert rc.http("POST", SYSTEM + "?insert=after&point=/qs-engine-test:system/dns=0.0.0.0",
                   {"qs-engine-test:dns": ["0.5.0.0"]}).status == 201
    assert rc.http("GET", SYSTEM + "?fields=dns").json() == {"qs-engine-test:system": {
        "dns": ["0.0.0.0", "0.5.0.0", "1.1.1.1"]}}
    assert_error(tmp_path, rc.http("POST", IFS + "?insert=first", {"qs-engine-test:interface": [{"name": "x"}]}),
                 400, "invalid-value")  # interface is not ordered-by-user
    assert_error(tmp_path, route("40.0.0.0/8", "?insert=after"), 400, "invalid-value")  # no point
    assert_error(tmp_path, route("40.0.0.0/8", "?insert=after&point=/qs-engine-test:interfaces/route=9.9.9.9%2F8"),
                 400, "bad-attribute")  # no such sibling
    with rc.running.connect() as m:
        data = etree.fromstring(m.get_config("running").data_xml.encode())
    assert [p.text for p in data.iter(f"{{{NS}}}prefix")][:2] == ["1.0.0.0/8", "5.0.0.0/8"]


def test_yang_patch_json_and_xml_is_one_transaction(rc, tmp_path):
    load(rc)
    patch = {"ietf-yang-patch:yang-patch": {"patch-id": "p1", "comment": "two edits", "edit": [
        {"edit-id": "add", "operation": "create", "target": "/interface=eth7",
         "value": {"qs-engine-test:interface": [{"name": "eth7", "vlan": 77}]}},
        {"edit-id": "route", "operation": "insert", "target": "/route=0.0.0.0%2F0", "where": "first",
         "value": {"qs-engine-test:route": [{"prefix": "0.0.0.0/0", "out-interface": "eth7"}]}},
        {"edit-id": "move", "operation": "move", "target": "/route=10.0.0.0%2F8", "where": "before",
         "point": "/route=0.0.0.0%2F0"},
        {"edit-id": "drop", "operation": "remove", "target": "/interface=eth1/vlan"}]}}
    ok = rc.http("PATCH", IFS, json.dumps(patch), ctype="application/yang-patch+json")
    assert ok.status == 200 and ok.json() == {"ietf-yang-patch:yang-patch-status": {"patch-id": "p1", "ok": [None]}}
    valid_yang_data(tmp_path, ok)
    interfaces = rc.http("GET", IFS + "?content=config").json()["qs-engine-test:interfaces"]
    assert [r["prefix"] for r in interfaces["route"]] == ["10.0.0.0/8", "0.0.0.0/0"]
    assert {i["name"]: i.get("vlan") for i in interfaces["interface"]} == {"eth0": 10, "eth1": None, "eth7": 77}
    assert len(rc.commits) == 3  # load's two and the patch: one commit
    etag = ok.headers["ETag"]
    failing = {"ietf-yang-patch:yang-patch": {"patch-id": "p2", "edit": [
        {"edit-id": "fine", "operation": "merge", "target": "/interface=eth0",
         "value": {"qs-engine-test:interface": [{"name": "eth0", "vlan": 100}]}},
        {"edit-id": "exists", "operation": "create", "target": "/interface=eth7",
         "value": {"qs-engine-test:interface": [{"name": "eth7"}]}}]}}
    refused = rc.http("PATCH", IFS, json.dumps(failing), ctype="application/yang-patch+json")
    assert refused.status == 409
    status = refused.json()["ietf-yang-patch:yang-patch-status"]
    edit, = status["edit-status"]["edit"]
    assert edit["edit-id"] == "exists" and edit["errors"]["error"][0]["error-tag"] == "data-exists"
    valid_yang_data(tmp_path, refused)
    assert rc.http("GET", IFS + "/interface=eth0/vlan").json() == {"qs-engine-test:vlan": 10}  # nothing applied
    assert rc.http("GET", "/restconf/data?content=config").headers["ETag"] == etag
    invalid = {"ietf-yang-patch:yang-patch": {"patch-id": "p3", "edit": [
        {"edit-id": "slow", "operation": "merge", "target": "/interface=eth0",
         "value": {"qs-engine-test:interface": [{"name": "eth0", "speed-mbps": 1}]}}]}}
    global_error = rc.http("PATCH", IFS, json.dumps(invalid), ctype="application/yang-patch+json")
    assert global_error.status == 500
    assert global_error.json()["ietf-yang-patch:yang-patch-status"]["errors"]["error"][0]["error-app-tag"] == \
        "must-violation"
    valid_yang_data(tmp_path, global_error)
    xml_patch = (f'<yang-patch xmlns="{PATCH_NS}"><patch-id>x1</patch-id>'
                 f'<edit><edit-id>e1</edit-id><operation>replace</operation><target>/interface=eth7</target>'
                 f'<value><interface xmlns="{NS}"><name>eth7</name><vlan>78</vlan></interface></value></edit>'
                 f'<edit><edit-id>e2</edit-id><operation>delete</operation><target>/interface=eth1</target></edit>'
                 '</yang-patch>')
    xml_ok = rc.http("PATCH", IFS, xml_patch, ctype="application/yang-patch+xml", accept=XML)
    assert xml_ok.status == 200 and xml_ok.xml().find(f"{{{PATCH_NS}}}ok") is not None
    valid_yang_data(tmp_path, xml_ok)
    assert rc.http("GET", IFS + "/interface=eth7/vlan").json() == {"qs-engine-test:vlan": 78}
    xml_bad = rc.http("PATCH", IFS, xml_patch, ctype="application/yang-patch+xml", accept=XML)
    assert xml_bad.status == 409  # eth1 is gone: the delete fails
    valid_yang_data(tmp_path, xml_bad)
    assert xml_bad.xml().findtext(f".//{{{PATCH_NS}}}edit-id") == "e2"
    assert_error(tmp_path, rc.http("PATCH", IFS, '{"ietf-yang-patch:yang-patch": {"patch-id": "p", "edit": []}}',
                                   ctype="application/yang-patch+json"), 400, "malformed-message")
    move_missing = {"ietf-yang-patch:yang-patch": {"patch-id": "p4", "edit": [
        {"edit-id": "ghost", "operation": "move", "target": "/route=9.0.0.0%2F8", "where": "first"}]}}
    ghost = rc.http("PATCH", IFS, json.dumps(move_missing), ctype="application/yang-patch+json")
    assert ghost.status == 409
    assert ghost.json()["ietf-yang-patch:yang-patch-status"]["edit-status"]["edit"][0]["edit-id"] == "ghost"


def test_media_types_and_methods(rc, tmp_path):
    load(rc)
    assert_error(tmp_path, rc.http("GET", IFS, accept="text/html"), 406, "invalid-value")
    assert rc.http("GET", IFS, accept="text/html, application/yang-data+xml;q=0.5").headers["Content-Type"] == XML
    assert rc.http("GET", IFS, accept="*/*").headers["Content-Type"] == JSON
    assert_error(tmp_path, rc.http("PUT", SYSTEM, '{"qs-engine-test:system": {}}', ctype="application/json"),
                 415, "invalid-value")  # strict server: only the yang-data media types
    assert_error(tmp_path, rc.http("PATCH", SYSTEM, '{"qs-engine-test:system": {}}', ctype="text/plain"),
                 415, "invalid-value")
    assert_error(tmp_path, rc.http("POST", SYSTEM, "{}", ctype="application/yang-patch+json"), 415, "invalid-value")
    assert_error(tmp_path, rc.http("PUT", "/restconf/operations/qs-engine-test:ping", {}), 405,
                 "operation-not-supported")
    assert_error(tmp_path, rc.http("POST", "/restconf/data/qs-engine-test:nowhere", {}), 400, "unknown-element")
    assert_error(tmp_path, rc.http("GET", "/restconf/ds/ietf-datastores:nothing"), 404, "invalid-value")
    assert_error(tmp_path, rc.http("PUT", "/restconf/ds/ietf-datastores:operational/qs-engine-test:system",
                                   {"qs-engine-test:system": {}}), 405, "operation-not-supported")
    assert_error(tmp_path, rc.http("GET", IFS + "/"), 400, "invalid-value")  # strict: no trailing '/'


def test_etag_last_modified_and_conditions(rc, tmp_path):
    load(rc)
    first = rc.http("GET", SYSTEM)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag.startswith('"') and email.utils.parsedate_to_datetime(modified)
    assert rc.http("GET", IFS).headers["ETag"] == etag  # the datastore's, for every resource in it
    unchanged = rc.http("GET", SYSTEM, headers={"If-None-Match": etag})
    assert unchanged.status == 304 and unchanged.body == b"" and unchanged.headers["ETag"] == etag
    assert rc.http("GET", SYSTEM, headers={"If-Modified-Since": modified}).status == 304
    stale = rc.http("PATCH", SYSTEM, {"qs-engine-test:system": {"hostname": "r9"}}, headers={"If-Match": '"old"'})
    assert_error(tmp_path, stale, 412, "operation-failed")
    assert rc.http("GET", SYSTEM + "/hostname").json() == {"qs-engine-test:hostname": "r1"}
    time.sleep(1.1)  # Last-Modified has a resolution of one second
    fresh = rc.http("PATCH", SYSTEM, {"qs-engine-test:system": {"hostname": "r9"}}, headers={"If-Match": etag})
    assert fresh.status == 204 and fresh.headers["ETag"] != etag
    assert email.utils.parsedate_to_datetime(fresh.headers["Last-Modified"]) > \
        email.utils.parsedate_to_datetime(modified)
    assert rc.http("GET", SYSTEM, headers={"If-None-Match": etag}).status == 200
    too_late = rc.http("PATCH", SYSTEM, {"qs-engine-test:system": {"hostname": "r10"}},
                       headers={"If-Unmodified-Since": modified})
    assert_error(tmp_path, too_late, 412, "operation-failed")
    # a NETCONF edit changes the entity tag too
    with rc.running.connect() as m:
        m.edit_config(target="running", config=f'<config xmlns="{BASE}"><system xmlns="{NS}"><hostname>nc</hostname>'
                                                '</system></config>')
    assert rc.http("GET", SYSTEM).headers["ETag"] != fresh.headers["ETag"]


def test_rpc_and_action(rc, tmp_path):
    load(rc)
    reply = rc.http("POST", "/restconf/operations/qs-engine-test:ping", {"qs-engine-test:input": {"host": "h",
                                                                                                 "count": 3}})
    assert reply.status == 200 and reply.json() == {"qs-engine-test:output": {"received": 3}}
    xml = rc.http("POST", "/restconf/operations/qs-engine-test:ping",
                  f'<input xmlns="{NS}"><host>h</host></input>', accept=XML)
    assert xml.status == 200 and xml.xml().tag == f"{{{NS}}}output" and xml.xml().findtext(f"{{{NS}}}received") == "1"
    assert_error(tmp_path, rc.http("POST", "/restconf/operations/qs-engine-test:ping",
                                   {"qs-engine-test:input": {"host": "h", "count": 11}}), 400, "invalid-value")
    assert_error(tmp_path, rc.http("POST", "/restconf/operations/qs-engine-test:ping",
                                   {"qs-engine-test:input": {}}), 409, "data-missing")  # host is mandatory
    assert_error(tmp_path, rc.http("POST", "/restconf/operations/qs-engine-test:nothing"), 404, "invalid-value")
    action = rc.http("POST", IFS + "/interface=eth0/reset", {"qs-engine-test:input": {"delay": 2}})
    assert action.status == 200 and action.json() == {"qs-engine-test:output": {"done": True}}
    assert rc.http("POST", IFS + "/interface=eth0/reset", {"qs-engine-test:input": {"delay": 0}}).status == 204
    assert rc.http("POST", IFS + "/interface=eth0/reset", accept=XML).xml().findtext(f"{{{NS}}}done") == "true"
    assert_error(tmp_path, rc.http("POST", IFS + "/interface=eth9/reset"), 409, "data-missing")
    assert_error(tmp_path, rc.http("GET", IFS + "/interface=eth0/reset"), 405, "operation-not-supported")


def test_nmda_datastores_candidate_and_locks(rc, tmp_path):
    load(rc)
    running = rc.http("GET", "/restconf/ds/ietf-datastores:running/qs-engine-test:system")
    assert running.json() == {"qs-engine-test:system": {"hostname": "r1", "dns": ["1.1.1.1"]}}
    operational = rc.http("GET", "/restconf/ds/ietf-datastores:operational/qs-engine-test:system")
    assert operational.json()["qs-engine-test:system"]["uptime"] == 42
    valid_datastore(tmp_path, rc.http("GET", "/restconf/ds/ietf-datastores:running"), "getconfig")
    valid_datastore(tmp_path, rc.http("GET", "/restconf/ds/ietf-datastores:operational", accept=XML))
    candidate = "/restconf/ds/ietf-datastores:candidate/qs-engine-test:system"
    assert rc.http("PATCH", candidate, {"qs-engine-test:system": {"hostname": "cand"}}).status == 204
    assert rc.http("GET", candidate + "/hostname").json() == {"qs-engine-test:hostname": "cand"}
    assert rc.http("GET", SYSTEM + "/hostname").json() == {"qs-engine-test:hostname": "r1"}
    assert rc.http("POST", "/restconf/operations/ietf-netconf:commit").status == 204
    assert rc.http("GET", SYSTEM + "/hostname").json() == {"qs-engine-test:hostname": "cand"}
    assert rc.http("PATCH", candidate, {"qs-engine-test:system": {"hostname": "dropped"}}).status == 204
    assert rc.http("POST", "/restconf/operations/ietf-netconf:discard-changes").status == 204
    assert rc.http("GET", candidate + "/hostname").json() == {"qs-engine-test:hostname": "cand"}
    assert_error(tmp_path, rc.http("POST", "/restconf/operations/ietf-netconf:commit", user=READER), 403,
                 "access-denied")
    assert rc.http("GET", "/restconf/ds/ietf-datastores:startup").status == 200
    # a NETCONF session's lock holds RESTCONF writes back
    with rc.running.connect() as m:
        with m.locked("running"):
            locked = assert_error(tmp_path, rc.http("PATCH", SYSTEM, {"qs-engine-test:system": {"hostname": "l"}}),
                                  409, "in-use")
            assert "locked by NETCONF session" in locked["error-message"]
            assert rc.http("GET", SYSTEM + "/hostname").status == 200
    assert rc.http("PATCH", SYSTEM, {"qs-engine-test:system": {"hostname": "l"}}).status == 204


def test_netconf_sees_restconf_and_back(rc, tmp_path):
    with rc.running.connect() as m:
        m.edit_config(target="running", config=f'<config xmlns="{BASE}"><interfaces xmlns="{NS}"><interface>'
                                                '<name>nc0</name><vlan>40</vlan></interface></interfaces></config>')
        assert rc.http("GET", IFS + "/interface=nc0/vlan").json() == {"qs-engine-test:vlan": 40}
        m.create_subscription()
        assert rc.http("PATCH", IFS + "/interface=nc0", {"qs-engine-test:interface": [{"name": "nc0",
                                                                                        "vlan": 41}]}).status == 204
        data = etree.fromstring(m.get_config("running").data_xml.encode())
        assert data.find(f".//{{{NS}}}vlan").text == "41"
        change = m.take_notification(timeout=10)
        by = etree.fromstring(change.notification_xml.encode()).find(
            ".//{urn:ietf:params:xml:ns:yang:ietf-netconf-notifications}changed-by")
        assert by.findtext("{urn:ietf:params:xml:ns:yang:ietf-netconf-notifications}username") == "admin"
        assert by.findtext("{urn:ietf:params:xml:ns:yang:ietf-netconf-notifications}session-id") == "0"


def test_event_stream_sse(rc, tmp_path):
    load(rc)
    event = etree.Element(f"{{{NS}}}link-event", nsmap={None: NS})
    etree.SubElement(event, f"{{{NS}}}name").text = "eth0"
    etree.SubElement(event, f"{{{NS}}}status").text = "down"
    rc.run(rc.server.notify(event))  # before the subscription: replayed with start-time
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)).isoformat()

    async def read(path: str, count: int, user=ADMIN, then=None) -> list[bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.get(rc.restconf.url + path, headers={"Authorization": basic(user)}) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
                if then is not None:  # the stream is open (its headers came): what happens now is live
                    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(then(), rc.loop.loop))
                events, data = [], b""
                async with asyncio.timeout(10):
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            data += line[6:]
                        elif line == b"\n" and data:
                            events.append(data)
                            data = b""
                            if len(events) == count:
                                return events
        return events
    query = urllib.parse.quote(start)
    events = asyncio.run(read(f"/restconf/streams/NETCONF/json?start-time={query}&filter=/qs-engine-test:link-event",
                              1))
    notification = json.loads(events[0])["ietf-restconf:notification"]
    assert notification["qs-engine-test:link-event"] == {"name": "eth0", "status": "down"}
    assert dt.datetime.fromisoformat(notification["eventTime"])

    xml = etree.fromstring(asyncio.run(read("/restconf/streams/NETCONF/xml", 1, then=lambda: rc.server.notify(event)))[0])
    assert xml.find(f"{{{NS}}}link-event/{{{NS}}}status").text == "down"
    yanglint(tmp_path, etree.tostring(xml.find(f"{{{NS}}}link-event")), "xml", "notif")
    stopped = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).isoformat()
    ended = asyncio.run(read(f"/restconf/streams/NETCONF/json?start-time={query}&stop-time="
                             f"{urllib.parse.quote(stopped)}", 10))  # ends at stop-time with what it had
    assert any(b"link-event" in e for e in ended)
    assert_error(tmp_path, rc.http("GET", "/restconf/streams/NETCONF/json?depth=1"), 400, "invalid-value")


def test_a_body_over_the_limit_is_refused(rc, tmp_path):
    small = RestconfServer(rc.server, "127.0.0.1", 0, limits=HttpLimits(max_body=1024))
    rc.run(small.start())
    try:
        big = {"qs-engine-test:interfaces": {"interface": [{"name": f"eth{i}"} for i in range(200)]}}
        assert_error(tmp_path, Http(small.url)("PUT", IFS, big), 413, "too-big")
    finally:
        rc.run(small.stop())


# --- transport ------------------------------------------------------------------------------------------


def _certificate(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_and_the_plain_http_guard(rc, tmp_path):
    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    secure = RestconfServer(rc.server, "127.0.0.1", 0, ssl_context=context)
    rc.run(secure.start())
    try:
        assert secure.url.startswith("https://")
        client_context = ssl.create_default_context(cafile=str(cert))
        reply = Http(secure.url, client_context)("GET", "/restconf/yang-library-version")
        assert reply.status == 200
        over_curl = curl("-u", "admin:admin-pw", secure.url + "/restconf/data/qs-engine-test:interfaces?depth=1",
                         cafile=cert)
        assert over_curl.status == 200 and over_curl.json() == {"qs-engine-test:interfaces": {}}
        with pytest.raises(subprocess.CalledProcessError):  # curl will not trust an unknown certificate
            curl(secure.url + "/restconf/yang-library-version")
    finally:
        rc.run(secure.stop())
    with pytest.raises(ValueError, match="not a loopback address"):
        RestconfServer(rc.server, "0.0.0.0", 0)
    assert RestconfServer(rc.server, "0.0.0.0", 0, insecure_http=True).host == "0.0.0.0"
    assert RestconfServer(rc.server, "::1", 0).url.startswith("http://[::1]:")


def test_benchmark_reports_every_cell():
    """tools/bench_restconf.py end to end (figures belong to the benchmark, not to tests)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "restconf", "--seconds", "0.2", "--rounds", "1",
                             "--depth", "2"], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["NETCONF", "RESTCONF", "JSON", "RESTCONF", "XML", "JSON/NETCONF"]
    for title in ("reads/s, one at a time", "reads/s, 2 in flight", "writes/s, one at a time"):
        row = next(line for line in lines if line.startswith(title))
        figures = row[len(title):].split()
        assert len(figures) == 4 and all(float(f.rstrip("x")) > 0 for f in figures), row
