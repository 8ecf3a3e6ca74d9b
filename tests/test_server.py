"""The NETCONF server engine driven by ncclient over real SSH sessions: edit-config semantics,
datastores, locks, confirmed commit, NACM, notifications, and the extension points."""
from __future__ import annotations

import asyncio
import time

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError as NcRPCError
from ncclient.xml_ import to_ele

from conftest import ENGINE_NS, start_server

NS = {"e": ENGINE_NS}


def cfg(body: str) -> str:
    return (f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" '
            f'xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0" xmlns:yang="urn:ietf:params:xml:ns:yang:1">'
            f'{body}</config>')


def ifaces(body: str) -> str:
    return cfg(f'<interfaces xmlns="{ENGINE_NS}">{body}</interfaces>')


def running(m, source="running") -> etree._Element:
    return to_ele(m.get_config(source, filter=("subtree", f'<interfaces xmlns="{ENGINE_NS}"/>')).data_xml)


def names(tree) -> list[str]:
    return tree.xpath("//e:interface/e:name/text()", namespaces=NS)


def test_merge_create_replace_delete_remove(engine):
    with engine.connect() as m:
        m.edit_config(target="running", config=ifaces(
            "<interface><name>a</name><vlan>10</vlan></interface><interface><name>b</name></interface>"))
        assert names(running(m)) == ["a", "b"]
        m.edit_config(target="running", config=ifaces(
            '<interface nc:operation="replace"><name>a</name><speed-mbps>100</speed-mbps></interface>'))
        tree = running(m)
        assert tree.xpath("//e:interface[e:name='a']/e:vlan", namespaces=NS) == []
        assert tree.xpath("string(//e:interface[e:name='a']/e:speed-mbps)", namespaces=NS) == "100"
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", config=ifaces('<interface nc:operation="create"><name>b</name></interface>'))
        assert err.value.tag == "data-exists"
        assert err.value.path == "/qs-engine-test:interfaces/qs-engine-test:interface[qs-engine-test:name='b']"
        m.edit_config(target="running", config=ifaces('<interface nc:operation="delete"><name>b</name></interface>'))
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", config=ifaces('<interface nc:operation="delete"><name>b</name></interface>'))
        assert err.value.tag == "data-missing"
        m.edit_config(target="running", config=ifaces('<interface nc:operation="remove"><name>b</name></interface>'))
        assert names(running(m)) == ["a"]


def test_invalid_edit_changes_nothing_and_names_the_node(engine):
    with engine.connect() as m:
        m.edit_config(target="running", config=ifaces("<interface><name>a</name><vlan>10</vlan></interface>"))
        before = m.get_config("running").data_xml
        cases = {
            "<interface><name>b</name><vlan>5000</vlan></interface>": ("invalid-value", "vlan"),
            "<interface><name>b</name><vlan>10</vlan></interface>": ("operation-failed", "vlan"),  # unique
            "<interface><name>b</name><speed-mbps>5</speed-mbps></interface>": ("operation-failed", "speed-mbps"),
            "<route><prefix>p</prefix><out-interface>nowhere</out-interface></route>": ("data-missing", "out-interface"),
            "<interface><name>b</name><colour>red</colour></interface>": ("unknown-element", "interface"),
            "<interface><vlan>3</vlan></interface>": ("missing-element", "interface"),
        }
        for body, (tag, where) in cases.items():
            with pytest.raises(NcRPCError) as err:
                m.edit_config(target="running", config=ifaces(body))
            assert err.value.tag == tag, body
            assert where in (err.value.path or "") or where in err.value.message, body
            assert m.get_config("running").data_xml == before
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", config=cfg('<nothing xmlns="urn:example:unknown"/>'))
        assert err.value.tag == "unknown-namespace"
        assert err.value.info is not None and "bad-namespace" in err.value.info


def test_must_error_message_and_app_tag(engine):
    with engine.connect() as m:
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", config=ifaces("<interface><name>x</name><speed-mbps>1</speed-mbps></interface>"))
        assert err.value.message == "speed must be at least 10 Mb/s"
        assert "must-violation" in err.value.xml.findtext(
            "{urn:ietf:params:xml:ns:netconf:base:1.0}error-app-tag")


def test_creating_a_case_deletes_the_other_cases_of_its_choice(engine):
    """RFC 7950 section 7.9: the creation of a node of one case deletes the other cases' nodes;
    a create of the case already there changes nothing of the others."""
    def transport(m) -> list[str]:
        data = to_ele(m.get_config("running", filter=("subtree", f'<system xmlns="{ENGINE_NS}"/>')).data_xml)
        return sorted(etree.QName(e).localname for e in data.iter() if etree.QName(e).localname
                      in ("tcp-port", "unix-socket", "hostname"))

    with engine.connect() as m:
        m.edit_config(target="running", config=cfg(
            f'<system xmlns="{ENGINE_NS}"><hostname>h</hostname><tcp-port>830</tcp-port></system>'))
        assert transport(m) == ["hostname", "tcp-port"]
        m.edit_config(target="running", config=cfg(f'<system xmlns="{ENGINE_NS}"><unix-socket>/run/s</unix-socket>'
                                                    f'</system>'))
        assert transport(m) == ["hostname", "unix-socket"]
        m.edit_config(target="running", config=cfg(f'<system xmlns="{ENGINE_NS}"><unix-socket>/run/t</unix-socket>'
                                                    f'</system>'))
        assert transport(m) == ["hostname", "unix-socket"]


def test_ordered_by_user_insert(engine):
    with engine.connect() as m:
        m.edit_config(target="running", config=ifaces(
            "<interface><name>a</name></interface><route><prefix>r1</prefix><out-interface>a</out-interface></route>"
            "<route><prefix>r2</prefix><out-interface>a</out-interface></route>"))
        m.edit_config(target="running", config=ifaces(
            '<route yang:insert="before" yang:key="[prefix=\'r1\']"><prefix>r0</prefix>'
            "<out-interface>a</out-interface></route>"))
        m.edit_config(target="running", config=ifaces(
            '<route yang:insert="first"><prefix>r2</prefix></route>'))
        tree = running(m)
        assert tree.xpath("//e:route/e:prefix/text()", namespaces=NS) == ["r2", "r0", "r1"]
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", config=ifaces(
                '<route yang:insert="after" yang:key="[prefix=\'zz\']"><prefix>r3</prefix>'
                "<out-interface>a</out-interface></route>"))
        assert err.value.tag == "bad-attribute"


def test_default_operation_none_and_replace(engine):
    with engine.connect() as m:
        m.edit_config(target="running", config=ifaces("<interface><name>a</name></interface>"))
        m.edit_config(target="running", default_operation="none", config=ifaces(
            '<interface><name>a</name><vlan nc:operation="create">7</vlan></interface>'))
        assert running(m).xpath("string(//e:vlan)", namespaces=NS) == "7"
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", default_operation="none", config=ifaces(
                '<interface><name>zz</name><vlan nc:operation="delete">7</vlan></interface>'))
        assert err.value.tag == "data-missing"
        m.edit_config(target="running", default_operation="replace", config=ifaces(
            "<interface><name>only</name></interface>"))
        assert names(running(m)) == ["only"]


def test_test_only_changes_nothing(engine):
    with engine.connect() as m:
        m.edit_config(target="running", test_option="test-only",
                      config=ifaces("<interface><name>t</name></interface>"))
        assert names(running(m)) == []
        with pytest.raises(NcRPCError):
            m.edit_config(target="running", test_option="test-only",
                          config=ifaces("<interface><name>t</name><vlan>0</vlan></interface>"))


def test_continue_on_error_reports_every_error_and_applies_nothing(engine):
    with engine.connect() as m:
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", error_option="continue-on-error", config=cfg(
                f'<interfaces xmlns="{ENGINE_NS}"><interface nc:operation="delete"><name>x</name></interface></interfaces>'
                f'<system xmlns="{ENGINE_NS}"><hostname nc:operation="delete"/></system>'))
        assert len(err.value.errors) == 2
        assert {e.tag for e in err.value.errors} == {"data-missing"}


def test_candidate_commit_discard_and_validation_at_commit(engine):
    with engine.connect() as m, engine.connect() as other:
        m.edit_config(target="candidate", config=ifaces("<interface><name>c</name></interface>"))
        assert names(running(m)) == []
        assert names(running(other, "candidate")) == ["c"]  # the candidate is shared
        m.discard_changes()
        assert names(running(m, "candidate")) == []
        # `set` lets a candidate be built in steps; the dangling leafref is caught at commit.
        m.edit_config(target="candidate", test_option="set", config=ifaces(
            "<route><prefix>p</prefix><out-interface>later</out-interface></route>"))
        with pytest.raises(NcRPCError) as err:
            m.commit()
        assert err.value.tag == "data-missing"
        with pytest.raises(NcRPCError):
            m.validate(source="candidate")
        m.edit_config(target="candidate", config=ifaces("<interface><name>later</name></interface>"))
        m.commit()
        assert names(running(m)) == ["later"]


def test_locks(engine):
    with engine.connect() as m, engine.connect() as other:
        m.lock("running")
        with pytest.raises(NcRPCError) as err:
            other.lock("running")
        assert err.value.tag == "lock-denied"
        assert err.value.info is not None and str(m.session_id) in err.value.info
        with pytest.raises(NcRPCError) as err:
            other.edit_config(target="running", config=ifaces("<interface><name>x</name></interface>"))
        assert err.value.tag == "in-use"
        with pytest.raises(NcRPCError):
            other.unlock("running")
        m.unlock("running")
        other.lock("running")  # free again
        # A lock held by a session that ends is released.
    with engine.connect() as third:
        third.lock("running")


def test_candidate_lock_denied_while_another_session_has_changes(engine):
    with engine.connect() as m, engine.connect() as other:
        m.edit_config(target="candidate", config=ifaces("<interface><name>x</name></interface>"))
        with pytest.raises(NcRPCError) as err:
            other.lock("candidate")
        assert err.value.tag == "lock-denied"


def test_confirmed_commit_rolls_back_on_timeout_and_on_session_drop(engine):
    with engine.connect() as m:
        m.edit_config(target="candidate", config=ifaces("<interface><name>tmp</name></interface>"))
        m.commit(confirmed=True, timeout="1")
        assert names(running(m)) == ["tmp"]
        deadline = time.monotonic() + 10
        while names(running(m)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert names(running(m)) == []
    with engine.connect() as m:
        m.edit_config(target="candidate", config=ifaces("<interface><name>tmp2</name></interface>"))
        m.commit(confirmed=True, timeout="60")
    with engine.connect() as m:
        deadline = time.monotonic() + 10
        while names(running(m)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert names(running(m)) == []


def test_confirmed_commit_persist_survives_session_and_is_confirmed_by_id(engine):
    with engine.connect() as m:
        m.edit_config(target="candidate", config=ifaces("<interface><name>keep</name></interface>"))
        m.commit(confirmed=True, timeout="60", persist="token-1")
    with engine.connect() as m:
        assert names(running(m)) == ["keep"]
        with pytest.raises(NcRPCError) as err:
            m.commit(persist_id="wrong")
        assert err.value.tag == "invalid-value"
        m.commit(persist_id="token-1")
        with pytest.raises(NcRPCError):
            m.cancel_commit(persist_id="token-1")  # nothing pending any more
        assert names(running(m)) == ["keep"]


def test_cancel_commit_restores_previous_running(engine):
    with engine.connect() as m:
        m.edit_config(target="running", config=ifaces("<interface><name>base</name></interface>"))
        m.edit_config(target="candidate", config=ifaces("<interface><name>extra</name></interface>"))
        m.commit(confirmed=True, timeout="60")
        assert names(running(m)) == ["base", "extra"]
        m.cancel_commit()
        assert names(running(m)) == ["base"]


def test_startup_and_restart_keep_committed_config(loop_thread, engine_schema, tmp_path):
    first = start_server(loop_thread, engine_schema, datastore_dir=tmp_path)
    with first.connect() as m:
        m.edit_config(target="running", config=ifaces("<interface><name>saved</name></interface>"))
    loop_thread.run(first.server.stop())
    second = start_server(loop_thread, engine_schema, datastore_dir=tmp_path)
    with second.connect() as m:
        assert names(running(m)) == ["saved"]
        m.copy_config(source="running", target="startup")
        m.edit_config(target="running", config=ifaces("<interface><name>unsaved</name></interface>"))
    loop_thread.run(second.server.stop())
    third = start_server(loop_thread, engine_schema, datastore_dir=tmp_path)
    with third.connect() as m:
        assert names(running(m)) == ["saved"]  # boots from startup (RFC 6241 section 8.7)
        m.delete_config(target="startup")
        with pytest.raises(NcRPCError) as err:
            m.delete_config(target="running")
        assert err.value.tag == "invalid-value"
    loop_thread.run(third.server.stop())


def test_filters(engine):
    with engine.connect() as m:
        m.edit_config(target="running", config=cfg(
            f'<interfaces xmlns="{ENGINE_NS}"><interface><name>a</name><vlan>1</vlan></interface>'
            f'<interface><name>b</name><vlan>2</vlan></interface></interfaces>'
            f'<system xmlns="{ENGINE_NS}"><hostname>h</hostname></system>'))
        data = to_ele(m.get_config("running", filter=("subtree",
            f'<interfaces xmlns="{ENGINE_NS}"><interface><name>b</name></interface></interfaces>')).data_xml)
        assert names(data) == ["b"] and data.xpath("string(//e:vlan)", namespaces=NS) == "2"
        assert data.find(f"{{{ENGINE_NS}}}system") is None
        data = to_ele(m.get_config("running", filter=("subtree",
            f'<interfaces xmlns="{ENGINE_NS}"><interface><name/></interface></interfaces>')).data_xml)
        assert names(data) == ["a", "b"] and data.xpath("//e:vlan", namespaces=NS) == []
        data = to_ele(m.get(filter=("xpath", ({"q": ENGINE_NS}, "/q:interfaces/q:interface[q:vlan='1']"))).data_xml)
        assert names(data) == ["a"]
        with pytest.raises(NcRPCError) as err:
            m.get(filter=("xpath", ({"q": ENGINE_NS}, "/q:interfaces/[")))
        assert err.value.tag == "invalid-value"


def test_with_defaults_modes(engine):
    with engine.connect() as m:
        m.edit_config(target="running", config=cfg(f'<system xmlns="{ENGINE_NS}"><hostname>h</hostname></system>'))
        flt = ("subtree", f'<system xmlns="{ENGINE_NS}"/>')
        explicit = to_ele(m.get_config("running", filter=flt).data_xml)
        assert explicit.find(".//e:mtu", NS) is None
        report_all = to_ele(m.get_config("running", filter=flt, with_defaults="report-all").data_xml)
        assert report_all.findtext(".//e:mtu", namespaces=NS) == "1500"
        tagged = to_ele(m.get_config("running", filter=flt, with_defaults="report-all-tagged").data_xml)
        mtu = tagged.find(".//e:mtu", NS)
        assert mtu.get("{urn:ietf:params:xml:ns:netconf:default:1.0}default") == "true"
        m.edit_config(target="running", config=cfg(f'<system xmlns="{ENGINE_NS}"><mtu>1500</mtu></system>'))
        trimmed = to_ele(m.get_config("running", filter=flt, with_defaults="trim").data_xml)
        assert trimmed.find(".//e:mtu", NS) is None


def test_read_only_user(engine):
    with engine.connect() as admin:
        admin.edit_config(target="running", config=ifaces("<interface><name>a</name></interface>"))
    with engine.connect("reader", "reader-pw") as m:
        assert names(running(m)) == ["a"]
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", config=ifaces("<interface><name>b</name></interface>"))
        assert err.value.tag == "access-denied"
        with pytest.raises(NcRPCError) as err:
            m.commit()
        assert err.value.tag == "access-denied"
        with pytest.raises(NcRPCError) as err:
            m.dispatch(to_ele(f'<action xmlns="urn:ietf:params:xml:ns:yang:1"><interfaces xmlns="{ENGINE_NS}">'
                              f"<interface><name>a</name><reset/></interface></interfaces></action>"))
        assert err.value.tag == "access-denied"
        with pytest.raises(NcRPCError) as err:
            m.lock("running")
        assert err.value.tag == "access-denied"
        assert "module qs-engine-test" in m.get_schema("qs-engine-test").data
        m.create_subscription()
        # The NACM configuration itself is default-deny-all: pruned from what the reader sees.
        assert "ietf-netconf-acm" not in m.get_config("running").data_xml
    with engine.connect() as admin:
        assert "ietf-netconf-acm" in admin.get_config("running").data_xml


def test_wrong_password_is_refused(engine):
    from ncclient.transport.errors import AuthenticationError
    with pytest.raises(AuthenticationError):
        engine.connect("admin", "wrong")


def test_subtree_writers_write_their_subtree_and_nothing_else(loop_thread, engine_schema):
    from conftest import RunningServer
    from netconf_core.server import NetconfServer, SubtreeWriters, User, standard_nacm

    async def make():
        writers = SubtreeWriters(("ops",), "/qs:interfaces", {"qs": ENGINE_NS})
        server = NetconfServer(engine_schema, {"admin": User(password="admin-pw"), "ops": User(password="ops-pw")},
                               nacm=standard_nacm(["admin"], [], subtree_writers=writers))
        await server.start()
        return server
    engine = RunningServer(loop_thread, loop_thread.run(make()))
    try:
        with engine.connect("ops", "ops-pw") as m:
            m.edit_config(target="running", config=ifaces("<interface><name>w</name></interface>"))
            m.edit_config(target="running", config=ifaces('<interface nc:operation="delete"><name>w</name></interface>'))
            assert names(running(m)) == []
            refused = [cfg(f'<system xmlns="{ENGINE_NS}"><hostname>h</hostname></system>'),
                       cfg('<nacm xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-acm"><groups><group>'
                           "<name>read-write</name><user-name>ops</user-name></group></groups></nacm>")]
            for config in refused:
                with pytest.raises(NcRPCError) as err:
                    m.edit_config(target="running", config=config)
                assert err.value.tag == "access-denied"
            with pytest.raises(NcRPCError) as err:
                m.dispatch(to_ele(f'<ping xmlns="{ENGINE_NS}"><host>127.0.0.1</host></ping>'))
            assert err.value.tag == "access-denied"
        with engine.connect() as admin:  # nothing refused was written
            system = to_ele(admin.get_config("running", filter=("subtree", f'<system xmlns="{ENGINE_NS}"/>')).data_xml)
            assert system.xpath("//e:hostname", namespaces=NS) == []
    finally:
        loop_thread.run(engine.server.stop())


def test_public_key_authentication(loop_thread, engine_schema, tmp_path):
    import asyncssh
    from ncclient import manager

    from netconf_core.server import NetconfServer, User, standard_nacm
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id_ed25519"
    key.write_private_key(key_file)

    async def make():
        server = NetconfServer(engine_schema, {"ops": User(authorized_keys=[key.export_public_key().decode()])},
                               nacm=standard_nacm(["ops"], []))
        await server.start()
        return server
    server = loop_thread.run(make())
    try:
        with manager.connect(host="127.0.0.1", port=server.port, username="ops", key_filename=str(key_file),
                             hostkey_verify=False, allow_agent=False, look_for_keys=False) as m:
            assert m.session_id
    finally:
        loop_thread.run(server.stop())


def test_kill_session_releases_its_lock(engine):
    victim = engine.connect()
    victim.lock("running")
    with engine.connect() as m:
        with pytest.raises(NcRPCError):
            m.kill_session(m.session_id)
        m.kill_session(victim.session_id)
        m.lock("running")
        deadline = time.monotonic() + 10
        while victim.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not victim.connected


def test_notifications_after_edit_and_replay(engine):
    with engine.connect() as m:
        m.edit_config(target="running", config=ifaces("<interface><name>n1</name></interface>"))
    with engine.connect() as m:
        m.create_subscription(start_time="2000-01-01T00:00:00Z")
        first = m.take_notification(timeout=10)
        assert "netconf-config-change" in first.notification_xml  # replayed
        replay_done = m.take_notification(timeout=10)
        assert "replayComplete" in replay_done.notification_xml
        with engine.connect() as other:
            other.edit_config(target="running", config=ifaces("<interface><name>n2</name></interface>"))
        live = m.take_notification(timeout=10)
        assert "netconf-config-change" in live.notification_xml and "<username>admin</username>" in live.notification_xml


def test_extension_points(engine):
    """A device plugs in: state at get time, a veto on commit, an RPC, an action, a notification."""
    server = engine.server
    seen = []

    async def state():
        return etree.fromstring(
            f'<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><system xmlns="{ENGINE_NS}">'
            f'<uptime>42</uptime></system></data>')

    async def veto(before, after):
        seen.append(len(after))
        if after.xpath("//e:interface[e:name='forbidden']", namespaces=NS):
            from netconf_core.errors import RPCError
            raise RPCError("operation-failed", "the device refuses 'forbidden'")

    async def ping(session, op, context):
        host = op.findtext(f"{{{ENGINE_NS}}}host")
        out = etree.Element(f"{{{ENGINE_NS}}}received")
        out.text = "1" if host == "127.0.0.1" else "0"
        return [out]

    async def reset(session, op, context):
        out = etree.Element(f"{{{ENGINE_NS}}}done")
        out.text = "true" if context.findtext(f"{{{ENGINE_NS}}}name") == "a" else "false"
        return [out]

    server.add_state_provider(state)
    server.on_change(veto)
    server.add_rpc("/qs-engine-test:ping", ping)
    server.add_rpc("/qs-engine-test:interfaces/interface/reset", reset)
    with engine.connect() as m:
        assert "<uptime>42</uptime>" in m.get(filter=("subtree", f'<system xmlns="{ENGINE_NS}"/>')).data_xml
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", config=ifaces("<interface><name>forbidden</name></interface>"))
        assert "refuses" in err.value.message
        assert names(running(m)) == []
        m.edit_config(target="running", config=ifaces("<interface><name>a</name></interface>"))
        reply = m.dispatch(to_ele(f'<ping xmlns="{ENGINE_NS}"><host>127.0.0.1</host></ping>'))
        assert "<received>1</received>" in reply.xml or ">1</" in reply.xml
        with pytest.raises(NcRPCError) as err:
            m.dispatch(to_ele(f'<ping xmlns="{ENGINE_NS}"><count>3</count></ping>'))
        assert err.value.tag in ("missing-element", "data-missing")
        reply = m.dispatch(to_ele(
            f'<action xmlns="urn:ietf:params:xml:ns:yang:1"><interfaces xmlns="{ENGINE_NS}"><interface>'
            f'<name>a</name><reset/></interface></interfaces></action>'))
        assert "true" in reply.xml
        with pytest.raises(NcRPCError) as err:
            m.dispatch(to_ele(
                f'<action xmlns="urn:ietf:params:xml:ns:yang:1"><interfaces xmlns="{ENGINE_NS}"><interface>'
                f'<name>missing</name><reset/></interface></interfaces></action>'))
        assert err.value.tag == "data-missing"
        m.create_subscription()
        event = etree.fromstring(f'<link-event xmlns="{ENGINE_NS}"><name>a</name><status>down</status></link-event>')
        engine.loop.run(server.notify(event))
        got = m.take_notification(timeout=10)
        assert "link-event" in got.notification_xml
    assert seen


def test_get_schema_and_monitoring(engine):
    with engine.connect() as m:
        assert "module qs-engine-test" in m.get_schema("qs-engine-test").data
        with pytest.raises(NcRPCError) as err:
            m.get_schema("no-such-module")
        assert err.value.tag == "invalid-value"
        state = m.get(filter=("subtree", '<netconf-state xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring">'
                                          "<sessions/></netconf-state>")).data_xml
        assert f"<session-id>{m.session_id}</session-id>" in state
        lib = m.get(filter=("subtree", '<yang-library xmlns="urn:ietf:params:xml:ns:yang:ietf-yang-library"/>')).data_xml
        assert "<name>qs-engine-test</name>" in lib


def test_replay_with_stop_time_ends_the_subscription(engine):
    import datetime as dt
    with engine.connect() as m:
        m.edit_config(target="running", config=ifaces("<interface><name>r1</name></interface>"))
    stop = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).isoformat()
    with engine.connect() as m:
        m.create_subscription(start_time="2000-01-01T00:00:00Z", stop_time=stop)
        kinds = []
        for _ in range(3):
            note = m.take_notification(timeout=10)
            assert note is not None
            kinds.append(etree.QName(note.notification_ele[1]).localname)
        assert kinds == ["netconf-config-change", "replayComplete", "notificationComplete"]
        with pytest.raises(NcRPCError) as err:
            m.create_subscription(stream_name="no-such-stream")
        assert err.value.tag == "invalid-value"


def test_identityref_prefix_declared_on_an_ancestor_survives_a_merge(loop_thread, tmp_path):
    """A leaf value's prefix may be declared anywhere above it in the edit (XML namespaces)."""
    from netconf_core.schema import Schema
    schema = Schema(["etsi-qkd-sdn-node", "etsi-qkd-node-types"])
    running = start_server(loop_thread, schema)
    etsi = "urn:etsi:qkd:yang:etsi-qkd-node"
    link = ("<qkd_links><qkd_link><qkdl_id>00000000-0000-0000-0000-000000000001</qkdl_id>"
            "<qkdl_type>t:{}</qkdl_type></qkd_link></qkd_links>")
    body = (f'<qkd_node xmlns="{etsi}" xmlns:t="urn:etsi:qkd:yang:etsi-qkd-node-types">'
            f"<qkdn_id>00000000-0000-0000-0000-0000000000aa</qkdn_id>{{}}</qkd_node>")
    try:
        with running.connect() as m:
            m.edit_config(target="running", config=cfg(body.format(link.format("PHYS"))))
            m.edit_config(target="running", config=cfg(body.format(link.format("VIRT"))))
            assert "VIRT</qkdl_type>" in m.get_config("running").data_xml
    finally:
        loop_thread.run(running.server.stop())



def test_edit_written_with_prefixes_and_a_foreign_default_namespace(engine):
    """<config> in the base namespace by default and data under a prefix, as some clients write it."""
    with engine.connect() as m:
        m.edit_config(target="running", config=(
            f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" xmlns:q="{ENGINE_NS}">'
            f"<q:interfaces><q:interface><q:name>p</q:name><q:vlan>3</q:vlan></q:interface></q:interfaces></config>"))
        m.edit_config(target="running", config=(
            f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" xmlns:q="{ENGINE_NS}">'
            f"<q:interfaces><q:interface><q:name>p</q:name><q:vlan>4</q:vlan></q:interface></q:interfaces></config>"))
        tree = running(m)
        assert names(tree) == ["p"] and tree.xpath("string(//e:vlan)", namespaces=NS) == "4"


def test_a_bad_hello_ends_the_session_and_is_counted(engine):
    import asyncssh

    async def bad_hello() -> bytes:
        async with asyncssh.connect("127.0.0.1", engine.port, username="admin", password="admin-pw",
                                    known_hosts=None) as conn:
            stdin, stdout, _ = await conn.open_session(subsystem="netconf", encoding=None)
            await stdout.readuntil(b"]]>]]>")  # the server's hello
            stdin.write(b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities>'
                        b"<capability>urn:example:not-netconf</capability></capabilities></hello>]]>]]>")
            return await asyncio.wait_for(stdout.read(), 10)  # EOF: the server closed the session
    assert engine.loop.run(bad_hello()) == b""
    with engine.connect() as m:
        stats = m.get(filter=("subtree", '<netconf-state xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring">'
                                          "<statistics/></netconf-state>")).data_xml
        assert "<in-bad-hellos>1</in-bad-hellos>" in stats


def test_an_edit_whose_elements_are_prefixed_is_applied_in_their_namespace() -> None:
    """A client may bind the model's namespace to a prefix under <config>'s default namespace;
    a new container made from such an edit keeps its own namespace."""
    from netconf_core import schema_for
    from netconf_core.datastore import empty_tree
    from netconf_core.edit import apply_edit

    schema = schema_for(("qi-optical-switch",))
    osw = "urn:qstrata:yang:qi-optical-switch"
    running = empty_tree()
    running.append(etree.fromstring(f'<optical-switch xmlns="{osw}"><switch-id>sw</switch-id><ports><port>'
                                    '<port-id>1</port-id></port><port><port-id>2</port-id></port></ports>'
                                    '</optical-switch>'))
    edit = etree.fromstring(f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" xmlns:o="{osw}">'
                            '<o:optical-switch><o:cross-connects><o:cross-connect><o:name>x</o:name>'
                            '<o:in-port>1</o:in-port><o:out-port>2</o:out-port></o:cross-connect>'
                            '</o:cross-connects></o:optical-switch></config>')
    result = schema.canonical(apply_edit(schema, schema.canonical(running, config_only=True), edit),
                              config_only=True)
    assert result.findtext(f"{{{osw}}}optical-switch/{{{osw}}}cross-connects/{{{osw}}}cross-connect/"
                           f"{{{osw}}}name") == "x"
