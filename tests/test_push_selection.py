"""YANG-Push snapshots of operational are built for the subscription's selection only (RFC 8641
on-change): a state provider of other nodes is not asked, and the server's own state is built
when the selection can hold it."""
from __future__ import annotations

from lxml import etree

from conftest import ENGINE_NS
from netconf_core import NetconfClient
from test_push import checked, connect, edits

NCM = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
DATA = "urn:ietf:params:xml:ns:netconf:base:1.0"


async def _add_provider(server, provider, path):
    server.add_state_provider(provider, path)


def test_a_snapshot_asks_only_the_providers_of_its_selection(engine):
    calls = {"system": 0, "interfaces": 0}
    uptime = {"value": 1}

    async def system():
        calls["system"] += 1
        return etree.fromstring(f'<data xmlns="{DATA}"><system xmlns="{ENGINE_NS}">'
                                f'<uptime>{uptime["value"]}</uptime></system></data>')

    async def interfaces():
        calls["interfaces"] += 1
        return None

    engine.loop.run(_add_provider(engine.server, system, "/qs-engine-test:system"))
    engine.loop.run(_add_provider(engine.server, interfaces, "/qs-engine-test:interfaces"))
    engine.server.signals_state = True
    nc = connect(engine)

    async def run():
        sub = await nc.establish_subscription("operational", xpath="/q:system/q:uptime",
                                              namespaces={"q": ENGINE_NS}, on_change=True)
        sync = await sub.next(5)
        assert sync.findtext("yp:datastore-contents/q:system/q:uptime",
                             namespaces={"q": ENGINE_NS, "yp": "urn:ietf:params:xml:ns:yang:ietf-yang-push"}) == "1"
        uptime["value"] = 2
        engine.server.state_changed()
        update = checked(engine, await sub.next(3))
        assert edits(update) == [("replace", "/qs-engine-test:system/uptime", ["2"])]
        assert calls["system"] >= 2 and calls["interfaces"] == 0
    engine.loop.run(run())
    engine.loop.run(nc.close_session())


def test_a_selection_of_the_servers_own_state_follows_it(engine):
    nc = connect(engine)

    async def run():
        sub = await nc.establish_subscription(
            "operational", xpath="/ncm:netconf-state/ncm:sessions/ncm:session/ncm:username",
            namespaces={"ncm": NCM}, on_change=True)
        sync = await sub.next(5)
        before = len(sync.findall(f".//{{{NCM}}}session"))
        other = await NetconfClient.connect("127.0.0.1", engine.port, "admin", "admin-pw")
        update = checked(engine, await sub.next(3))
        [(operation, target, values)] = edits(update)
        assert operation == "create" and target.startswith("/ietf-netconf-monitoring:netconf-state/sessions/session=")
        assert "admin" in values and before >= 1
        await other.close_session()
        update = checked(engine, await sub.next(3))
        assert [(op, t) for op, t, _ in edits(update)] == [("delete", target)]
    engine.loop.run(run())
    engine.loop.run(nc.close_session())
