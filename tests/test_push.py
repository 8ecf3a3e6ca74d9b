"""YANG-Push (RFC 8639, RFC 8640, RFC 8641) against a real server of the engine test model: raw
establish-subscription through ncclient, and the subscription API of our client. Every
notification received is checked against the server's own models by libyang."""
from __future__ import annotations

import asyncio
import datetime as dt
import time

import libyang
import pytest
from lxml import etree
from ncclient.xml_ import to_ele

from conftest import ENGINE_NS
from netconf_core import NetconfClient, RPCError

SN = "urn:ietf:params:xml:ns:yang:ietf-subscribed-notifications"
YP = "urn:ietf:params:xml:ns:yang:ietf-yang-push"
DS = "urn:ietf:params:xml:ns:yang:ietf-datastores"
NOTIF = "urn:ietf:params:xml:ns:netconf:notification:1.0"
NACM = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
X = {"q": ENGINE_NS, "yp": YP, "sn": SN}


def checked(engine, content: etree._Element) -> etree._Element:
    """`content` (a notification's top element), after libyang parsed it as the notification
    the models define: an unknown or misplaced node fails here."""
    node = engine.server.schema.ctx.parse_op_mem("xml", etree.tostring(content).decode(),
                                                  libyang.DataType.NOTIF_YANG)
    node.free()
    return content


def connect(engine, user: str = "admin", password: str = "admin-pw"):
    return engine.loop.run(NetconfClient.connect("127.0.0.1", engine.port, user, password))


def hostname(value: str) -> str:
    return f'<system xmlns="{ENGINE_NS}"><hostname>{value}</hostname></system>'


def edits(update: etree._Element) -> list[tuple[str, str, list[str]]]:
    """(operation, target, texts of the value's leaves) of each edit of a push-change-update."""
    out = []
    for edit in update.iterfind("yp:datastore-changes/yp:yang-patch/yp:edit", X):
        value = edit.find("yp:value", X)
        leaves = [e.text for e in value.iter() if e.text and len(e) == 0] if value is not None else []
        out.append((edit.findtext("yp:operation", namespaces=X), edit.findtext("yp:target", namespaces=X), leaves))
    return out


async def drain(sub, seconds: float) -> list[etree._Element]:
    """Everything the subscription delivers within `seconds`."""
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            item = await sub.next(left)
        except TimeoutError:
            break
        if item is None:
            break
        got.append(item)
    return got


def establish_xml(body: str) -> etree._Element:
    return to_ele(f'<establish-subscription xmlns="{SN}" xmlns:yp="{YP}" xmlns:ds="{DS}">{body}'
                  f"</establish-subscription>")


def test_ncclient_periodic_subscription_delivers_at_its_period_until_deleted(engine):
    with engine.connect() as m:
        m.edit_config(target="running", config=f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                               f'{hostname("periodic")}</config>')
        reply = m.dispatch(establish_xml(
            f'<yp:datastore>ds:running</yp:datastore>'
            f'<yp:datastore-xpath-filter xmlns:q="{ENGINE_NS}">/q:system</yp:datastore-xpath-filter>'
            f'<yp:periodic><yp:period>20</yp:period></yp:periodic>'))
        sub_id = etree.fromstring(reply.xml.encode()).findtext(f".//{{{SN}}}id")
        assert sub_id and sub_id.isdigit()
        updates, start = [], time.monotonic()
        while time.monotonic() - start < 1.5:
            n = m.take_notification(block=True, timeout=0.5)
            if n is not None:
                updates.append(etree.fromstring(n.notification_xml.encode()))
        assert 4 <= len(updates) <= 12, len(updates)
        for notification in updates:
            update = notification.find(f"{{{YP}}}push-update")
            checked(engine, update)
            assert update.findtext("yp:id", namespaces=X) == sub_id
            assert update.findtext("yp:datastore-contents/q:system/q:hostname", namespaces=X) == "periodic"
        m.dispatch(to_ele(f'<delete-subscription xmlns="{SN}"><id>{sub_id}</id></delete-subscription>'))
        while m.take_notification(block=True, timeout=0.3) is not None:  # any sent before the delete
            pass
        assert m.take_notification(block=True, timeout=0.6) is None


def test_periodic_anchor_time_aligns_the_updates(engine):
    anchor = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with engine.connect() as m:
        m.dispatch(establish_xml("<yp:datastore>ds:running</yp:datastore><yp:periodic><yp:period>50</yp:period>"
                                 "<yp:anchor-time>2026-01-01T00:00:00Z</yp:anchor-time></yp:periodic>"))
        phases = []
        for _ in range(3):
            n = etree.fromstring(m.take_notification(block=True, timeout=3).notification_xml.encode())
            assert n.find(f"{{{YP}}}push-update") is not None
            sent = dt.datetime.fromisoformat(n.findtext(f"{{{NOTIF}}}eventTime"))
            phases.append((sent - anchor).total_seconds() % 0.5)
        # Each update is sent at anchor + k * 0.5 s (a timer's lateness apart).
        assert all(phase < 0.05 for phase in phases), phases


def test_on_change_delivers_each_edit_once_with_its_yang_patch(engine):
    nc = connect(engine)

    async def run():
        sub = await nc.establish_subscription("running", xpath="/q:system | /q:interfaces",
                                              namespaces={"q": ENGINE_NS}, on_change=True)
        sync = checked(engine, await sub.next(5))
        assert etree.QName(sync).localname == "push-update"
        await nc.edit_config(hostname("h0"))
        await nc.edit_config(f'<interfaces xmlns="{ENGINE_NS}"><interface><name>e1</name><vlan>10</vlan>'
                             f"</interface><interface><name>e2</name><vlan>20</vlan></interface></interfaces>")
        for i in range(1, 4):
            await nc.edit_config(hostname(f"h{i}"))
        await nc.edit_config(f'<interfaces xmlns="{ENGINE_NS}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
                             f'<interface nc:operation="delete"><name>e1</name></interface></interfaces>')
        updates = await drain(sub, 1.5)
        assert [etree.QName(u).localname for u in updates] == ["push-change-update"] * 6
        for update in updates:
            checked(engine, update)
            assert update.findtext("yp:id", namespaces=X) == str(sub.id)
        got = [edits(u) for u in updates]
        assert got[0] == [("create", "/qs-engine-test:system", ["h0"])]
        assert got[1] == [("create", "/qs-engine-test:interfaces", ["e1", "10", "e2", "20"])]
        assert got[2:5] == [[("replace", "/qs-engine-test:system/hostname", [f"h{i}"])] for i in range(1, 4)]
        assert got[5] == [("delete", "/qs-engine-test:interfaces/interface=e1", [])]
        # Patch ids differ from one update to the next.
        ids = [u.findtext("yp:datastore-changes/yp:yang-patch/yp:patch-id", namespaces=X) for u in updates]
        assert len(set(ids)) == len(ids)
        await nc.delete_subscription(sub.id)
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


def test_excluded_change_and_no_sync_on_start(engine):
    nc = connect(engine)

    async def run():
        await nc.edit_config(hostname("before"))
        sub = await nc.establish_subscription("running", xpath="/q:system", namespaces={"q": ENGINE_NS},
                                              on_change=True, sync_on_start=False, excluded_changes=["delete"])
        await nc.edit_config(f'<system xmlns="{ENGINE_NS}"><mtu>2000</mtu></system>')
        await nc.edit_config(f'<system xmlns="{ENGINE_NS}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
                             f'<mtu nc:operation="delete"/></system>')
        updates = await drain(sub, 1.0)
        assert [edits(u) for u in updates] == [[("create", "/qs-engine-test:system/mtu", ["2000"])]]
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


def test_dampening_coalesces_changes(engine):
    nc = connect(engine)

    async def run():
        sub = await nc.establish_subscription("running", xpath="/q:system", namespaces={"q": ENGINE_NS},
                                              on_change=True, dampening=1.0, sync_on_start=False)
        for i in range(6):
            await nc.edit_config(hostname(f"d{i}"))
        updates = await drain(sub, 2.5)
        # The first change goes at once; the five within the dampening period make one update.
        assert 2 <= len(updates) <= 3, [edits(u) for u in updates]  # 3 only if the edits outlast 1 s
        assert edits(updates[0]) == [("create", "/qs-engine-test:system", ["d0"])]
        assert edits(updates[-1]) == [("replace", "/qs-engine-test:system/hostname", ["d5"])]
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


def test_nacm_prunes_updates_and_the_read_only_user_subscribes(engine):
    admin = connect(engine)
    reader = connect(engine, "reader", "reader-pw")
    deny_dns = (f'<nacm xmlns="{NACM}"><rule-list><name>read-only</name><rule><name>hide-dns</name>'
                f'<module-name>qs-engine-test</module-name><path xmlns:q="{ENGINE_NS}">/q:system/q:dns</path>'
                f"<access-operations>read</access-operations><action>deny</action></rule></rule-list></nacm>")

    async def run():
        await admin.edit_config(deny_dns)
        await admin.edit_config(f'<system xmlns="{ENGINE_NS}"><hostname>n0</hostname><dns>10.0.0.1</dns></system>')
        sub = await reader.establish_subscription("running", xpath="/q:system", namespaces={"q": ENGINE_NS},
                                                  on_change=True)
        periodic = await reader.establish_subscription("running", subtree=f'<system xmlns="{ENGINE_NS}"/>',
                                                       period=0.1)
        sync = await sub.next(5)
        assert sync.findtext("yp:datastore-contents/q:system/q:hostname", namespaces=X) == "n0"
        assert sync.find("yp:datastore-contents/q:system/q:dns", X) is None
        await admin.edit_config(f'<system xmlns="{ENGINE_NS}"><dns>10.0.0.2</dns></system>')
        await admin.edit_config(hostname("n1"))
        updates = await drain(sub, 1.0)
        # The dns change is invisible to the reader: only the hostname change arrives.
        assert [edits(u) for u in updates] == [[("replace", "/qs-engine-test:system/hostname", ["n1"])]]
        for update in await drain(periodic, 0.5):
            assert update.find("yp:datastore-contents/q:system/q:dns", X) is None
        with pytest.raises(RPCError) as denied:  # kill-subscription is for administrators
            await reader.kill_subscription(sub.id)
        assert denied.value.tag == "access-denied"
    engine.loop.run(run())
    engine.loop.run(reader.close_session())
    engine.loop.run(admin.close_session())


def test_delete_and_kill_stop_delivery(engine):
    admin = connect(engine)
    reader = connect(engine, "reader", "reader-pw")

    async def run():
        mine = await admin.establish_subscription("running", period=0.1)
        theirs = await reader.establish_subscription("running", period=0.1)
        assert await mine.next(2) is not None and await theirs.next(2) is not None
        with pytest.raises(RPCError) as err:  # delete-subscription is for the subscriber's own
            await reader.delete_subscription(mine.id)
        assert err.value.tag == "invalid-value"
        assert err.value.app_tag == "ietf-subscribed-notifications:no-such-subscription"
        await admin.delete_subscription(mine.id)
        await admin.kill_subscription(theirs.id)
        rest = await drain(theirs, 1.0)
        assert rest and etree.QName(rest[-1]).localname == "subscription-terminated"
        checked(engine, rest[-1])
        assert rest[-1].findtext("sn:reason", namespaces=X).endswith(":no-such-subscription")
        assert theirs.ended and await theirs.next(0.1) is None
        state = await admin.get(("subtree", f'<subscriptions xmlns="{SN}"/>'))
        assert state.find(f"{{{SN}}}subscriptions") is None  # none left
        with pytest.raises(RPCError) as err:
            await admin.delete_subscription(mine.id)
        assert err.value.app_tag == "ietf-subscribed-notifications:no-such-subscription"
    engine.loop.run(run())
    engine.loop.run(reader.close_session())
    engine.loop.run(admin.close_session())


def test_a_bad_subscription_gets_a_precise_error(engine):
    nc = connect(engine)

    async def run():
        with pytest.raises(RPCError) as err:
            await nc.establish_subscription("running", xpath="/q:system[", namespaces={"q": ENGINE_NS},
                                            on_change=True)
        assert err.value.tag == "invalid-value"
        assert err.value.app_tag == "ietf-subscribed-notifications:filter-unsupported"
        assert "datastore-xpath-filter '/q:system['" in err.value.message
        assert err.value.path.endswith("datastore-xpath-filter")
        with pytest.raises(RPCError) as err:
            await nc.establish_subscription("running", xpath="/nope:system", namespaces={}, on_change=True)
        assert err.value.tag == "invalid-value" and "nope" in err.value.message
        with pytest.raises(RPCError) as err:
            await nc.establish_subscription("running", period=0.01)
        assert err.value.app_tag == "ietf-yang-push:period-unsupported"
        with pytest.raises(RPCError) as err:
            await nc.establish_subscription("factory-default", period=1)
        assert err.value.tag == "invalid-value"
        with pytest.raises(RPCError) as err:
            await nc.establish_subscription(None, stream="NOPE")
        assert err.value.app_tag == "ietf-subscribed-notifications:stream-unavailable"
        assert "NETCONF" in err.value.message
        state = await nc.get(("subtree", f'<subscriptions xmlns="{SN}"/>'))
        assert state.find(f"{{{SN}}}subscriptions") is None  # nothing was set up
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


def test_operational_on_change_follows_state_providers(engine):
    uptime = {"value": 1}

    async def provider():
        return etree.fromstring(f'<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                f'<system xmlns="{ENGINE_NS}"><uptime>{uptime["value"]}</uptime></system></data>')
    engine.loop.run(_add_provider(engine.server, provider))
    nc = connect(engine)

    async def run():
        sub = await nc.establish_subscription("operational", xpath="/q:system/q:uptime",
                                              namespaces={"q": ENGINE_NS}, on_change=True)
        sync = await sub.next(5)
        assert sync.findtext("yp:datastore-contents/q:system/q:uptime", namespaces=X) == "1"
        for value in (2, 3):
            uptime["value"] = value
            update = checked(engine, await sub.next(3))
            assert edits(update) == [("replace", "/qs-engine-test:system/uptime", [str(value)])]
        assert await drain(sub, 0.8) == []  # no change, nothing sent
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


def test_a_server_that_signals_its_state_changes_is_looked_at_only_then(engine):
    """With signals_state, an on-change subscription to operational takes no snapshot on a
    timer: a change its provider does not signal waits for the next signal (or commit)."""
    uptime = {"value": 1, "calls": 0}

    async def provider():
        uptime["calls"] += 1
        return etree.fromstring(f'<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                f'<system xmlns="{ENGINE_NS}"><uptime>{uptime["value"]}</uptime></system></data>')
    engine.loop.run(_add_provider(engine.server, provider))
    engine.server.signals_state = True
    nc = connect(engine)

    async def run():
        sub = await nc.establish_subscription("operational", xpath="/q:system/q:uptime",
                                              namespaces={"q": ENGINE_NS}, on_change=True)
        await sub.next(5)  # the sync
        calls = uptime["calls"]
        uptime["value"] = 2
        assert await drain(sub, 1.0) == []  # not signalled: not seen, and the provider not asked
        assert uptime["calls"] == calls
        engine.server.state_changed()
        update = checked(engine, await sub.next(3))
        assert edits(update) == [("replace", "/qs-engine-test:system/uptime", ["2"])]
        engine.server.state_changed()  # signalled, but nothing changed: nothing sent
        assert await drain(sub, 0.5) == []
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


async def _add_provider(server, provider):
    server.add_state_provider(provider)


def test_subscription_state_and_streams(engine):
    nc = connect(engine)

    async def run():
        sub = await nc.establish_subscription("running", xpath="/q:system", namespaces={"q": ENGINE_NS},
                                              on_change=True, dampening=0.5)
        await sub.next(5)
        data = await nc.get(("subtree", f'<subscriptions xmlns="{SN}"/><streams xmlns="{SN}"/>'))
        node = engine.server.schema.ctx.parse_data_mem(
            "".join(etree.tostring(c).decode() for c in data), "xml", parse_only=True, strict=True)
        node.free()
        entry = data.find("sn:subscriptions/sn:subscription", X)
        assert entry.findtext("sn:id", namespaces=X) == str(sub.id)
        assert entry.findtext("yp:datastore", namespaces=X).endswith(":running")
        assert entry.findtext("yp:on-change/yp:dampening-period", namespaces=X) == "50"
        assert entry.findtext("sn:receivers/sn:receiver/sn:state", namespaces=X) == "active"
        assert entry.findtext("sn:receivers/sn:receiver/sn:sent-event-records", namespaces=X) == "1"
        assert data.findtext("sn:streams/sn:stream/sn:name", namespaces=X) == "NETCONF"
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


def test_stream_subscription_by_establish_subscription(engine):
    nc = connect(engine)

    async def run():
        await nc.establish_subscription(None, stream="NETCONF",
                                        subtree=f'<link-event xmlns="{ENGINE_NS}"><name>e7</name></link-event>')
        for name in ("e6", "e7"):
            await engine.server.notify(etree.fromstring(
                f'<link-event xmlns="{ENGINE_NS}"><name>{name}</name><status>up</status></link-event>'))
        notifications = nc.notifications()
        got = await asyncio.wait_for(notifications.__anext__(), 3)
        assert got.findtext(f"{{{ENGINE_NS}}}link-event/{{{ENGINE_NS}}}name") == "e7"
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


def test_push_benchmark_measures_every_edit():
    from tools import bench_push

    latencies = asyncio.run(bench_push.measure(5))
    assert len(latencies) == 5 and all(t > 0 for t in latencies)


def test_modify_and_resync_and_the_session_end(engine):
    nc = connect(engine)

    async def run():
        await nc.edit_config(hostname("m0"))
        sub = await nc.establish_subscription("running", xpath="/q:system/q:hostname", namespaces={"q": ENGINE_NS},
                                              period=2.0)
        assert (await sub.next(3)).findtext("yp:datastore-contents/q:system/q:hostname", namespaces=X) == "m0"
        modify = etree.fromstring(
            f'<modify-subscription xmlns="{SN}" xmlns:yp="{YP}" xmlns:ds="{DS}"><id>{sub.id}</id>'
            f"<yp:datastore>ds:running</yp:datastore>"
            f'<yp:datastore-xpath-filter xmlns:q="{ENGINE_NS}">/q:system/q:mtu</yp:datastore-xpath-filter>'
            f"<yp:periodic><yp:period>10</yp:period></yp:periodic></modify-subscription>")
        await nc.rpc(modify)
        updates = await drain(sub, 1.0)
        assert len(updates) >= 5  # every 0.1 s now, no longer every 2 s
        assert all(u.find("yp:datastore-contents/q:system/q:hostname", X) is None for u in updates)
        changes = await nc.establish_subscription("running", on_change=True, sync_on_start=False)
        await nc.rpc(etree.fromstring(f'<resync-subscription xmlns="{YP}"><id>{changes.id}</id></resync-subscription>'))
        resynced = await changes.next(3)
        assert etree.QName(resynced).localname == "push-update"
        assert resynced.findtext("yp:datastore-contents/q:system/q:hostname", namespaces=X) == "m0"
        other = await NetconfClient.connect("127.0.0.1", engine.port, "admin", "admin-pw")
        with pytest.raises(RPCError) as err:  # another session's subscription cannot be modified
            await other.rpc(modify)
        assert err.value.app_tag == "ietf-subscribed-notifications:no-such-subscription"
        await other.close_session()
    engine.loop.run(run())
    assert len(engine.server.push.subscriptions) == 2
    engine.loop.run(nc.close_session())

    async def gone():
        for _ in range(50):
            if not engine.server.push.subscriptions:
                return True
            await asyncio.sleep(0.05)
        return False
    assert engine.loop.run(gone())  # a session's subscriptions end with it


def test_a_session_holds_a_bounded_number_of_subscriptions(engine):
    from netconf_core.push import MAX_PER_SESSION
    nc = connect(engine)

    async def run():
        subs = [await nc.establish_subscription("running", period=5) for _ in range(MAX_PER_SESSION)]
        with pytest.raises(RPCError) as err:
            await nc.establish_subscription("running", period=5)
        assert err.value.tag == "resource-denied"
        assert err.value.app_tag == "ietf-subscribed-notifications:insufficient-resources"
        await nc.delete_subscription(subs[0].id)
        await nc.establish_subscription("running", period=5)  # room again
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


def test_device_link_keeps_its_watches_across_a_reconnect(engine):
    from netconf_core import DeviceLink, Endpoint, Watch

    watch = Watch("/q:system/q:hostname", (("q", ENGINE_NS),), datastore="running")
    seen: list[tuple[str, str | None]] = []

    async def on_update(link, got_watch, content):
        assert got_watch is watch
        seen.append((etree.QName(content).localname, next((e.text for e in content.iter(f"{{{ENGINE_NS}}}hostname")),
                                                          None)))

    async def until(condition):
        async with asyncio.timeout(10):
            while not condition():
                await asyncio.sleep(0.05)

    async def run():
        link = DeviceLink(Endpoint("engine", "127.0.0.1", engine.port, "admin", "admin-pw",
                                   host_key=engine.server.public_host_key), (),
                          watches=(watch,), on_update=on_update)
        link.start()
        editor = await NetconfClient.connect("127.0.0.1", engine.port, "admin", "admin-pw")
        try:
            await link.session()
            assert link.pushing
            await until(lambda: seen == [("push-update", None)])  # the sync: nothing selected yet
            await editor.edit_config(hostname("w1"))
            await until(lambda: seen[-1] == ("push-change-update", "w1"))
            engine.server.sessions[link.client.session_id].terminate()  # the server drops the link
            await until(lambda: link.connected.is_set() and seen[-1] == ("push-update", "w1"))  # resubscribed
            await editor.edit_config(hostname("w2"))
            await until(lambda: seen[-1] == ("push-change-update", "w2"))
        finally:
            await editor.close_session()
            await link.stop()
    engine.loop.run(run())
