"""The engine's extension points, on real servers and real NETCONF clients: state providers
run only for requests whose filter can select what they serve; an access policy decides
what each session reads, writes and receives; running replaced by a level goes through the
commit path (change handlers, config-change notification)."""
import asyncio
import copy
import datetime

import pytest
from lxml import etree

from conftest import ENGINE_NS, TEST_YANG
from netconf_core import (NacmAccess, NetconfClient, NetconfServer, RPCError, Schema, User, empty_tree,
                          standard_nacm)
from netconf_core.extension import filter_selects

YANGLIB_NS = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
NC_NOTIF_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
USERS = {"admin": User(password="admin-pw"), "monitor": User(password="monitor-pw")}
E = lambda tag: f"{{{ENGINE_NS}}}{tag}"


def engine_server(**kw) -> NetconfServer:
    return NetconfServer(Schema(["qs-engine-test"], [TEST_YANG]), USERS,
                         nacm=standard_nacm(["admin"], ["monitor"]), **kw)


async def client(server: NetconfServer, user: str = "admin") -> NetconfClient:
    return await NetconfClient.connect("127.0.0.1", server.port, user, password=f"{user}-pw")


def interfaces(*names: str) -> str:
    return (f'<interfaces xmlns="{ENGINE_NS}">'
            + "".join(f"<interface><name>{n}</name></interface>" for n in names) + "</interfaces>")


class Counted:
    """A real state provider that counts its calls."""

    def __init__(self, build):
        self.build = build
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        return self.build()


def uptime() -> etree._Element:
    data = empty_tree()
    etree.SubElement(etree.SubElement(data, E("system"), nsmap={None: ENGINE_NS}), E("uptime")).text = "42"
    return data


def test_a_provider_runs_only_for_filters_that_can_select_its_subtree():
    async def scenario():
        server = engine_server()
        system = Counted(uptime)
        interfaces_state = Counted(empty_tree)
        everything = Counted(empty_tree)
        server.add_state_provider(system, path="/qs-engine-test:system")
        server.add_state_provider(interfaces_state, path=["/qs-engine-test:interfaces/interface"])
        server.add_state_provider(everything)
        async with server:
            async with await client(server) as nc:
                def calls():
                    return system.calls, interfaces_state.calls, everything.calls

                data = await nc.get(("subtree", f'<system xmlns="{ENGINE_NS}"/>'))
                assert data.findtext(f"{E('system')}/{E('uptime')}") == "42"
                assert calls() == (1, 0, 1)
                await nc.get(("subtree", f'<yang-library xmlns="{YANGLIB_NS}"/>'))
                assert calls() == (1, 0, 2)
                await nc.get(("xpath", "/e:interfaces/e:interface", {"e": ENGINE_NS}))
                assert calls() == (1, 1, 3)
                data = await nc.get(("xpath", "/e:system/e:uptime | /e:interfaces", {"e": ENGINE_NS}))
                assert data.findtext(f"{E('system')}/{E('uptime')}") == "42"
                assert calls() == (2, 2, 4)
                data = await nc.get(("xpath", "//e:uptime", {"e": ENGINE_NS}))  # any depth: unsure, all
                assert data.findtext(f"{E('system')}/{E('uptime')}") == "42"
                assert calls() == (3, 3, 5)
                data = await nc.get()
                assert data.findtext(f"{E('system')}/{E('uptime')}") == "42"
                assert calls() == (4, 4, 6)
                await nc.get_config()  # configuration only: no provider
                assert calls() == (4, 4, 6)
    asyncio.run(scenario())


def test_a_provider_with_filter_gets_the_request_s_filter_and_its_answer_is_filtered_still():
    async def scenario():
        server = engine_server()
        filters = []

        async def provider(flt):
            filters.append(None if flt is None else (flt.get("type", "subtree"), [etree.QName(c).localname
                                                                                  for c in flt]))
            data = uptime()  # more than asked for: the engine filters it
            etree.SubElement(data[0], E("hostname")).text = "emulated"
            return data
        server.add_state_provider(provider, path="/qs-engine-test:system", with_filter=True)
        async with server:
            async with await client(server) as nc:
                data = await nc.get(("subtree", f'<system xmlns="{ENGINE_NS}"><uptime/></system>'))
                assert filters.pop() == ("subtree", ["system"])
                assert [etree.QName(c).localname for c in data.find(E("system"))] == ["uptime"]
                await nc.get(("xpath", "/e:system/e:uptime", {"e": ENGINE_NS}))
                assert filters.pop() == ("xpath", [])
                data = await nc.get()
                assert filters.pop() is None and data.findtext(f"{E('system')}/{E('hostname')}") == "emulated"
    asyncio.run(scenario())


def test_a_provider_path_must_name_a_loaded_module():
    server = engine_server()
    with pytest.raises(ValueError):
        server.add_state_provider(Counted(empty_tree), path="/no-such-module:system")
    with pytest.raises(ValueError):
        server.add_state_provider(Counted(empty_tree), path="system")


def test_what_filters_can_select():
    xpath = lambda select: etree.fromstring(f'<filter xmlns:e="{ENGINE_NS}" type="xpath" select="{select}"/>')
    assert filter_selects(xpath("/e:system/e:uptime[. = 'a|b']")) == {(ENGINE_NS, "system")}
    assert filter_selects(xpath("/e:*")) == {(ENGINE_NS, None)}
    assert filter_selects(xpath("/system")) is None
    assert filter_selects(xpath("count(/e:system)")) is None
    assert filter_selects(xpath("/x:system")) is None  # an unknown prefix: let the filter say so
    subtree = etree.fromstring(f'<filter><a xmlns="{ENGINE_NS}"/><b xmlns="{YANGLIB_NS}"/></filter>')
    assert filter_selects(subtree) == {(ENGINE_NS, "a"), (YANGLIB_NS, "b")}
    assert filter_selects(etree.fromstring(f'<filter><a xmlns="{ENGINE_NS}"/><system/></filter>')) is None
    assert filter_selects(None) is None


class HideAndBlock:
    """NACM, then: interfaces named hidden-* are seen by admin only, with their events; no one
    may create an interface named blocked-*."""

    def __init__(self, nacm: NacmAccess):
        self.nacm = nacm
        self.asked = {"prune": 0, "check_write": 0, "may_notify": 0}

    def prune(self, session, tree):
        self.asked["prune"] += 1
        tree = self.nacm.prune(session, tree)
        if session.username == "admin":
            return tree
        tree = copy.deepcopy(tree)
        for interface in tree.iterfind(f"{E('interfaces')}/{E('interface')}"):
            if interface.findtext(E("name")).startswith("hidden-"):
                interface.getparent().remove(interface)
        return tree

    def check_write(self, session, before, after):
        self.asked["check_write"] += 1
        self.nacm.check_write(session, before, after)
        if any(n.startswith("blocked-") for n in after.xpath("//e:interface/e:name/text()", namespaces={"e": ENGINE_NS})):
            raise RPCError("access-denied", "no blocked- interfaces", type="application")

    def may_notify(self, session, event):
        self.asked["may_notify"] += 1
        if event.name == "link-event" and session.username != "admin":
            return not (event.content.findtext(E("name")) or "").startswith("hidden-")
        return self.nacm.may_notify(session, event)


def test_the_access_policy_decides_reads_writes_and_notifications():
    async def scenario():
        server = engine_server()
        policy = HideAndBlock(server.access_policy)
        server.set_access_policy(policy)
        async with server:
            async with await client(server, "admin") as admin, await client(server, "monitor") as monitor:
                await admin.edit_config(interfaces("hidden-a", "plain-b"))
                names = lambda data: data.xpath("//e:interface/e:name/text()", namespaces={"e": ENGINE_NS})
                assert names(await admin.get_config()) == ["hidden-a", "plain-b"]
                assert names(await monitor.get_config()) == ["plain-b"]
                assert names(await monitor.get(("subtree", f'<interfaces xmlns="{ENGINE_NS}"/>'))) == ["plain-b"]
                # The policy refuses what NACM allows; NACM still refuses what it refuses.
                with pytest.raises(RPCError) as err:
                    await admin.edit_config(interfaces("blocked-c"))
                assert err.value.tag == "access-denied"
                with pytest.raises(RPCError) as err:
                    await monitor.edit_config(interfaces("plain-d"))
                assert err.value.tag == "access-denied"
                assert names(await admin.get_config()) == ["hidden-a", "plain-b"]
                # Notifications: monitor does not receive the hidden interface's event.
                await admin.create_subscription()
                await monitor.create_subscription()
                for name in ("hidden-a", "plain-b"):
                    await server.notify(etree.fromstring(
                        f'<link-event xmlns="{ENGINE_NS}"><name>{name}</name><status>down</status></link-event>'))

                async def events(nc, count):
                    got = []
                    async with asyncio.timeout(10):
                        async for notification in nc.notifications():
                            event = notification.find(E("link-event"))
                            if event is not None:
                                got.append(event.findtext(E("name")))
                            if len(got) == count:
                                return got
                assert await events(admin, 2) == ["hidden-a", "plain-b"]
                assert await events(monitor, 1) == ["plain-b"]
        assert all(policy.asked.values()), policy.asked
    asyncio.run(scenario())


def test_replace_running_runs_the_change_handlers_and_tells_subscribers():
    async def scenario():
        server = engine_server()
        seen = []

        async def handler(before, after):
            names = after.xpath("//e:interface/e:name/text()", namespaces={"e": ENGINE_NS})
            seen.append(names)
            if "refused" in names:
                raise RPCError("operation-failed", "the device refuses it")
        server.on_change(handler)
        async with server:
            async with await client(server) as nc:
                await nc.create_subscription()
                tree = copy.deepcopy(server.running())
                tree.append(etree.fromstring(interfaces("a")))
                before = await server.replace_running(tree)
                assert before.find(E("interfaces")) is None
                assert seen == [["a"]]
                assert server.running().xpath("//e:name/text()", namespaces={"e": ENGINE_NS}) == ["a"]
                async with asyncio.timeout(10):
                    async for notification in nc.notifications():
                        change = notification.find(f"{{{NC_NOTIF_NS}}}netconf-config-change")
                        if change is not None:
                            break
                assert change.find(f"{{{NC_NOTIF_NS}}}changed-by/{{{NC_NOTIF_NS}}}server") is not None
                # A refusal changes nothing.
                refused = copy.deepcopy(server.running())
                refused.find(E("interfaces")).append(
                    etree.fromstring(f"<interface xmlns='{ENGINE_NS}'><name>refused</name></interface>"))
                with pytest.raises(RPCError):
                    await server.replace_running(refused)
                assert server.running().xpath("//e:name/text()", namespaces={"e": ENGINE_NS}) == ["a"]
                # An invalid tree is refused before any handler sees it.
                invalid = copy.deepcopy(server.running())
                etree.SubElement(invalid.find(f"{E('interfaces')}/{E('interface')}"), E("vlan")).text = "5000"
                with pytest.raises(RPCError):
                    await server.replace_running(invalid)
                assert len(seen) == 2
    asyncio.run(scenario())


def test_datastores_are_read_through_named_calls():
    server = engine_server()
    assert server.datastore("running") is server.running()
    assert server.datastore("startup") is not None
    with pytest.raises(ValueError):
        server.datastore("operational")


def test_the_orchestrator_restores_intents_through_the_commit_path(tmp_path):
    """Intents in the store but not in the saved running (say the datastore was lost) come
    back through the commit path: the change handler runs and a config-change is sent."""
    from models.ns import INTENT as INT_NS
    from orchestrator.intents import Orchestrator
    from orchestrator.store import IntentStore
    import asyncssh

    from netconf_core import Endpoint, public_key_line

    intent = (f"<intent xmlns='{INT_NS}'><name>kept</name><endpoints><source-sae>sae-a</source-sae>"
              f"<destination-sae>sae-b</destination-sae></endpoints><min-rate>1000</min-rate></intent>")
    store = IntentStore(tmp_path)
    store.put_config("kept", intent, "planned", "created by the operator")
    store.close()

    async def scenario():
        nowhere = lambda name: Endpoint(name, "127.0.0.1", 9, "admin", "admin-pw",  # never reached
                                        host_key=public_key_line(asyncssh.generate_private_key("ssh-ed25519")))
        orchestrator = Orchestrator("orchestrator", nowhere("service"), nowhere("forwarding"),
                                    nowhere("connectivity"), USERS, tmp_path)
        started = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
        handled = []

        async def spy(before, after):
            handled.append(after.xpath("//i:intent/i:name/text()", namespaces={"i": INT_NS}))
        orchestrator.server.on_change(spy)
        await orchestrator.start()
        try:
            assert handled == [["kept"]]
            async with await client(orchestrator.server) as nc:
                config = await nc.get_config()
                assert config.xpath("//i:intent/i:name/text()", namespaces={"i": INT_NS}) == ["kept"]
                await nc.create_subscription(start_time=started)  # replay: it was sent before we came
                async with asyncio.timeout(10):
                    async for notification in nc.notifications():
                        if notification.find(f"{{{NC_NOTIF_NS}}}netconf-config-change") is not None:
                            break
        finally:
            await orchestrator.stop()
    asyncio.run(scenario())
