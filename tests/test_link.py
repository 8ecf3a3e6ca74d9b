"""The multi-device transaction over real NETCONF servers: all devices take a change or none
keeps it, whichever step a device refuses."""
import asyncio

import pytest
from lxml import etree

from conftest import ENGINE_NS, TEST_YANG
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint, TransactionError, transaction
from netconf_core.schema import Schema
from netconf_core.server import NetconfServer, User, standard_nacm

BASE = "urn:ietf:params:xml:ns:netconf:base:1.0"


def config(name: str, vlan: int = 1, root: str = "config") -> etree._Element:
    return etree.fromstring(f'<{root} xmlns="{BASE}"><interfaces xmlns="{ENGINE_NS}"><interface>'
                            f"<name>{name}</name><vlan>{vlan}</vlan></interface></interfaces></{root}>")


def names(server: NetconfServer) -> list[str]:
    return server.datastores["running"].xpath("//e:name/text()", namespaces={"e": ENGINE_NS})


@pytest.mark.parametrize("refusal", ["edit", "confirmed-commit", "confirm"])
def test_a_refusal_at_any_step_leaves_every_device_as_it_was(refusal):
    schema = Schema(["qs-engine-test"], [TEST_YANG])

    async def scenario():
        servers = [NetconfServer(schema, {"admin": User(password="pw")}, nacm=standard_nacm(["admin"], []),
                                 name=f"d{i}") for i in range(2)]
        commits = {"count": 0}

        async def refuse(before, after):
            # d1's handler runs at its confirmed commit (1st call) and at the confirm (2nd call).
            commits["count"] += 1
            step = {1: "confirmed-commit", 2: "confirm"}.get(commits["count"])
            if step == refusal:
                raise RPCError("operation-failed", f"d1 refuses the {step}")
        for server in servers:
            await server.start()
            await server.update_running(lambda tree: tree.extend(config("before", root="data")) or tree)
        servers[1].on_change(refuse)
        links = [DeviceLink(Endpoint(s.name, "127.0.0.1", s.port, "admin", "pw", host_key=s.public_host_key),
                            ("qs-engine-test",))
                 for s in servers]
        for link in links:
            link.start()
        try:
            # An edit is refused by validation: VLAN 5000 is out of range.
            edits = {links[0]: config("new", vlan=2), links[1]: config("new", vlan=5000 if refusal == "edit" else 2)}
            with pytest.raises(TransactionError) as err:
                await transaction(edits)
            assert err.value.device == "d1", err.value
            for server in servers:
                assert names(server) == ["before"], server.name
                assert server.pending is None and not server.locks
        finally:
            for link in links:
                await link.stop()
            for server in servers:
                await server.stop()
    asyncio.run(scenario())


def test_a_lock_whose_reply_timed_out_does_not_deny_the_next_transaction():
    """The client gave up on <lock> (timeout) but the device granted it: the transaction's
    clean-up must still release it, or that session would be refused every later lock."""
    schema = Schema(["qs-engine-test"], [TEST_YANG])

    async def scenario():
        server = NetconfServer(schema, {"admin": User(password="pw")}, nacm=standard_nacm(["admin"], []), name="d0")
        await server.start()
        link = DeviceLink(Endpoint("d0", "127.0.0.1", server.port, "admin", "pw", host_key=server.public_host_key),
                          ("qs-engine-test",))
        link.start()
        try:
            nc = await link.session()
            nc.timeout = 0  # the <lock> is sent, then given up on at once
            with pytest.raises(TransactionError):
                await transaction({link: config("first")})
            nc.timeout = 10.0
            await transaction({link: config("second")})
            assert names(server) == ["second"]
            assert not server.locks
        finally:
            await link.stop()
            await server.stop()
    asyncio.run(scenario())
