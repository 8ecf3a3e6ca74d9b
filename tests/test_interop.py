"""What third-party NETCONF clients and tools need of our servers (issue 16): RFC 5277's modules
announced, every module get-schema serves listed in netconf-state, a yang-library whose
content-id is the hello's and whose features are what is offered, RFC 6470 config-change
edits, a clear error for an <rpc> without its namespace, and project modules that yuma123
(yangcli, netconfd) can load."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from netconf_core.models import PROJECT_MODULES
from netconf_core.yangdirs import IANA_YANG_DIR, IETF_YANG_DIR, PROJECT_YANG_DIR
from tools import conform

BASE = "urn:ietf:params:xml:ns:netconf:base:1.0"
MON = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
YANGLIB = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
NC_NOTIF = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
MANAGE_EVENT = "urn:ietf:params:xml:ns:netmod:notification"
X = {"mon": MON, "yl": YANGLIB, "ncn": NC_NOTIF, "me": MANAGE_EVENT}


def get(m, content: str) -> etree._Element:
    return etree.fromstring(m.get(filter=("subtree", content)).data_xml.encode())


def test_rfc5277_modules_are_announced_and_streams_listed(engine):
    with engine.connect() as m:
        caps = list(m.server_capabilities)
        for module in ("notifications", "nc-notifications"):
            assert any(f"?module={module}&" in c for c in caps), module
        data = get(m, f'<netconf xmlns="{MANAGE_EVENT}"/>')
        assert data.findtext("me:netconf/me:streams/me:stream/me:name", namespaces=X) == "NETCONF"
        assert data.findtext("me:netconf/me:streams/me:stream/me:replaySupport", namespaces=X) == "true"
        library = get(m, f'<yang-library xmlns="{YANGLIB}"/>')
        names = library.xpath("//yl:module-set/yl:module/yl:name/text()", namespaces=X)
        assert {"notifications", "nc-notifications", "ietf-subscribed-notifications", "ietf-yang-push"} <= set(names)


def test_schemas_list_imported_modules_and_get_schema_serves_each(engine):
    with engine.connect() as m:
        data = get(m, f'<netconf-state xmlns="{MON}"><schemas/></netconf-state>')
        listed = data.xpath("//mon:schema/mon:identifier/text()", namespaces=X)
        for imported in ("ietf-inet-types", "ietf-yang-types", "ietf-yang-patch", "ietf-restconf"):
            assert imported in listed, imported
        for identifier in ("ietf-inet-types", "ietf-yang-types", "notifications", "qs-engine-test"):
            text = m.get_schema(identifier).data
            assert re.search(rf"^\s*module {identifier} ", text, re.M), identifier


def test_yang_library_content_id_is_the_hellos_and_features_are_offered(engine):
    with engine.connect() as m:
        hello = next(c for c in m.server_capabilities if "yang-library:1.1" in c)
        content_id = re.search(r"content-id=([^&]+)", hello).group(1)
        library = get(m, f'<yang-library xmlns="{YANGLIB}"/>')
        library.extend(get(m, f'<modules-state xmlns="{YANGLIB}"/>'))
        assert library.findtext("yl:yang-library/yl:content-id", namespaces=X) == content_id
        assert library.findtext("yl:modules-state/yl:module-set-id", namespaces=X) == content_id
        netconf = library.xpath("//yl:module-set/yl:module[yl:name='ietf-netconf']", namespaces=X)[0]
        features = netconf.xpath("yl:feature/text()", namespaces=X)
        assert "url" not in features and "candidate" in features
        assert not any(c.startswith("urn:ietf:params:netconf:capability:url:") for c in m.server_capabilities)


def test_config_change_notification_carries_its_edits(engine):
    with engine.connect() as m:
        m.create_subscription()
        ns = conform.NS
        m.edit_config(target="running", config=f'<config xmlns="{BASE}"><interfaces xmlns="{ns}">'
                      f"<interface><name>i1</name><vlan>5</vlan></interface>"
                      f"<interface><name>i2</name></interface></interfaces></config>")
        m.edit_config(target="running", config=f'<config xmlns="{BASE}" xmlns:nc="{BASE}"><interfaces xmlns="{ns}">'
                      f'<interface><name>i1</name><vlan>6</vlan></interface>'
                      f'<interface nc:operation="delete"><name>i2</name></interface></interfaces></config>')
        records = []
        for _ in range(2):
            n = m.take_notification(block=True, timeout=5)
            change = etree.fromstring(n.notification_xml.encode()).find(f"{{{NC_NOTIF}}}netconf-config-change")
            records.append([(e.findtext("ncn:operation", namespaces=X), e.findtext("ncn:target", namespaces=X),
                             e.find("ncn:target", X).nsmap) for e in change.iterfind("ncn:edit", X)])
        assert [(op, target) for op, target, _ in records[0]] == [("create", "/qs-engine-test:interfaces")]
        assert [(op, target) for op, target, _ in records[1]] == [
            ("replace", "/qs-engine-test:interfaces/qs-engine-test:interface[qs-engine-test:name='i1']"
                        "/qs-engine-test:vlan"),
            ("delete", "/qs-engine-test:interfaces/qs-engine-test:interface[qs-engine-test:name='i2']")]
        assert records[1][0][2]["qs-engine-test"] == ns  # the target's prefix is declared


def test_rpc_without_namespace_is_told_what_is_missing(engine):
    m = engine.connect()
    try:
        raw = conform.RawSession(m)
        reply = raw.exchange('<rpc message-id="101"><get/></rpc>')
        error = reply.find(f"{{{BASE}}}rpc-error")
        assert error.findtext(f"{{{BASE}}}error-tag") == "malformed-message"
        message = error.findtext(f"{{{BASE}}}error-message")
        assert "no namespace" in message and BASE in message, message
        assert raw.exchange(f'<rpc xmlns="{BASE}" message-id="102"><get-config><source><running/></source>'
                            f"</get-config></rpc>").find(f"{{{BASE}}}data") is not None  # the session goes on
    finally:
        m._session.close()  # the raw session took ncclient's replies: no close-session


# --- yuma123 loads the project's modules ------------------------------------------------

# What yuma123 2.13 cannot load and no equivalent model avoids: the IETF's own ietf-alarms (a
# notification inside a list, RFC 8632), which qi-alarms imports. (It refuses an action that
# augments a data node too, even through a grouping: the project's actions sit in containers,
# or are RPCs.)
YUMA_LIMITS = {
    "qi-alarms": r"'notification' token not allowed here|import of module 'ietf-alarms' failed|Got 'notification'",
}


def yuma_load(module: str, home: Path) -> str:
    """yangcli's report of loading `module` from the project's and pyang's directories."""
    modpath = ":".join(str(d) for d in (PROJECT_YANG_DIR, IETF_YANG_DIR, IANA_YANG_DIR))
    argv = ["yangcli", f"--modpath={modpath}", f"--module={module}", "--batch-mode", "--autohistory=false",
            "--run-command=help"]
    done = subprocess.run(["script", "-qc", shlex.join(argv), "/dev/null"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "HOME": str(home)}, stdin=subprocess.DEVNULL)
    return done.stdout.replace("\r", "")


@pytest.mark.skipif(shutil.which("yangcli") is None or shutil.which("script") is None,
                    reason="yangcli (Debian package yangcli) and script (bsdutils) are needed")
@pytest.mark.parametrize("module", PROJECT_MODULES)
def test_yuma123_loads_the_module(module, tmp_path):
    output = yuma_load(module, tmp_path)
    errors = [line for line in output.splitlines() if line.startswith("Error") or "error(" in line]
    if module not in YUMA_LIMITS:
        assert "load OK" in output and not errors, output[-3000:]
        return
    # Only the known limitation: no range, default or other error besides it.
    unexplained = [e for e in errors if not re.search(YUMA_LIMITS[module], e)
                   and not re.search(r"\.yang:\d+\.\d+: error\((245|246|332)\)", e)]
    assert unexplained == [], unexplained
    assert "invalid real number" not in output and "invalid default" not in output


def test_xpath_filter_of_create_subscription_selects_notifications(engine):
    """RFC 5277 xpath filters: a config-change of the interfaces passes, one of the hostname
    does not; a filter that cannot be evaluated is refused when subscribing."""
    ns = conform.NS
    with engine.connect() as m:
        with pytest.raises(Exception, match="not an XPath"):
            m.create_subscription(filter=("xpath", "/nope:netconf-config-change"))
    with engine.connect() as m:
        m.create_subscription(filter=("xpath", ({"ncn": NC_NOTIF},
                                      "/ncn:netconf-config-change/ncn:edit[contains(ncn:target, 'interface')]")))
        m.edit_config(target="running", config=f'<config xmlns="{BASE}"><system xmlns="{ns}"><hostname>h-xpath</hostname></system>'
                      "</config>")
        m.edit_config(target="running", config=f'<config xmlns="{BASE}"><interfaces xmlns="{ns}">'
                      "<interface><name>x-filter</name></interface></interfaces></config>")
        n = m.take_notification(block=True, timeout=5)
        assert n is not None
        change = etree.fromstring(n.notification_xml.encode()).find(f"{{{NC_NOTIF}}}netconf-config-change")
        assert "interface" in change.findtext("ncn:edit/ncn:target", namespaces=X)
        assert m.take_notification(block=True, timeout=1) is None
