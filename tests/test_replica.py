"""The subscriber's copy of an on-change subscription (netconf_core.replica) against a real
server of the engine test model: after every update the copy equals what the server gives
for the same selection; RFC 8072 operations the server does not send (merge, insert, move,
remove) are applied to hand-made patches; an edit the copy cannot follow is refused whole."""
from __future__ import annotations

import libyang
import pytest
from lxml import etree

from conftest import ENGINE_NS
from netconf_core import NetconfClient, RPCError
from netconf_core.replica import Replica

YP = "urn:ietf:params:xml:ns:yang:ietf-yang-push"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
SELECTION = "/q:system | /q:interfaces"
USER_ORDERED = {f"{{{ENGINE_NS}}}dns", f"{{{ENGINE_NS}}}route"}


def normal(element: etree._Element) -> bytes:
    """`element` with the children of every node in a fixed order (but user-ordered ones in
    theirs), so that two trees holding the same data compare equal."""
    copy = etree.Element(element.tag)
    copy.text = (element.text or "").strip() or None
    children = [etree.fromstring(normal(child)) for child in element if isinstance(child.tag, str)]
    ordered = [c for c in children if c.tag in USER_ORDERED]
    others = sorted((c for c in children if c.tag not in USER_ORDERED), key=etree.tostring)
    copy.extend(others + ordered)
    return etree.tostring(copy)


def interfaces(body: str) -> str:
    return f'<interfaces xmlns="{ENGINE_NS}" xmlns:nc="{NC}">{body}</interfaces>'


EDITS = [
    f'<system xmlns="{ENGINE_NS}"><hostname>r0</hostname><dns>10.0.0.1</dns><dns>10.0.0.2</dns></system>',
    interfaces("<interface><name>e1</name><vlan>10</vlan></interface>"
               "<interface><name>e2</name><vlan>20</vlan><speed-mbps>100</speed-mbps></interface>"),
    f'<system xmlns="{ENGINE_NS}"><hostname>r1</hostname><mtu>9000</mtu></system>',
    interfaces("<interface><name>e3</name></interface>"
               "<route><prefix>10.1.0.0/16</prefix><out-interface>e1</out-interface></route>"),
    interfaces('<interface><name>e2</name><speed-mbps nc:operation="delete"/><enabled>false</enabled></interface>'),
    f'<system xmlns="{ENGINE_NS}" xmlns:nc="{NC}"><dns nc:operation="delete">10.0.0.1</dns><tcp-port>830</tcp-port>'
    f'</system>',
    interfaces('<interface nc:operation="delete"><name>e1</name></interface>'
               '<route nc:operation="delete"><prefix>10.1.0.0/16</prefix></route>'),
    f'<system xmlns="{ENGINE_NS}"><unix-socket>/run/x</unix-socket></system>',  # the choice's other case
]


def test_the_copy_follows_every_update_of_a_running_subscription(engine, engine_schema):
    async def scenario() -> None:
        nc = await NetconfClient.connect("127.0.0.1", engine.port, "admin", "admin-pw")
        try:
            sub = await nc.establish_subscription("running", xpath=SELECTION, namespaces={"q": ENGINE_NS},
                                                  on_change=True)
            replica = Replica(engine_schema)
            replica.update(await sub.next(5))  # the sync: nothing yet
            assert len(replica.root) == 0
            for edit in EDITS:
                await nc.edit_config(edit)
                update = await sub.next(5)
                assert etree.QName(update).localname == "push-change-update"
                replica.update(update)
                server = await nc.get_config(filter=("xpath", SELECTION, {"q": ENGINE_NS}))
                assert normal(replica.root) == normal(server), f"after {edit}"
            await nc.delete_subscription(sub.id)
        finally:
            await nc.close_session()
    engine.loop.run(scenario())


def patch(*edits: tuple[str, str, str | None], **extra: str) -> etree._Element:
    """A push-change-update holding `edits` (operation, target, value XML)."""
    update = etree.Element(f"{{{YP}}}push-change-update", nsmap={None: YP})
    etree.SubElement(update, f"{{{YP}}}id").text = "1"
    yang_patch = etree.SubElement(etree.SubElement(update, f"{{{YP}}}datastore-changes"), f"{{{YP}}}yang-patch")
    etree.SubElement(yang_patch, f"{{{YP}}}patch-id").text = "p"
    for number, (operation, target, value) in enumerate(edits, 1):
        edit = etree.SubElement(yang_patch, f"{{{YP}}}edit")
        etree.SubElement(edit, f"{{{YP}}}edit-id").text = f"e{number}"
        etree.SubElement(edit, f"{{{YP}}}operation").text = operation
        etree.SubElement(edit, f"{{{YP}}}target").text = target
        for name, text in extra.items():
            etree.SubElement(edit, f"{{{YP}}}{name}").text = text
        if value is not None:
            etree.SubElement(edit, f"{{{YP}}}value").append(etree.fromstring(value))
    return update


def sync(body: str) -> etree._Element:
    update = etree.Element(f"{{{YP}}}push-update")
    etree.SubElement(update, f"{{{YP}}}datastore-contents").append(etree.fromstring(body))
    return update


def q(tag: str) -> str:
    return f"{{{ENGINE_NS}}}{tag}"


def test_merge_insert_move_and_remove(engine_schema):
    replica = Replica(engine_schema)
    replica.update(sync(f'<interfaces xmlns="{ENGINE_NS}"><interface><name>e1</name><vlan>1</vlan></interface>'
                        f'<route><prefix>a</prefix><out-interface>e1</out-interface></route>'
                        f'<route><prefix>b</prefix><out-interface>e1</out-interface></route></interfaces>'))
    replica.update(patch(("merge", "/qs-engine-test:interfaces/interface=e1",
                          f'<interface xmlns="{ENGINE_NS}"><name>e1</name><speed-mbps>10</speed-mbps></interface>')))
    entry = replica.root.find(f"{q('interfaces')}/{q('interface')}")
    assert (entry.findtext(q("vlan")), entry.findtext(q("speed-mbps"))) == ("1", "10")
    route = f'<route xmlns="{ENGINE_NS}"><prefix>c</prefix><out-interface>e1</out-interface></route>'
    replica.update(patch(("insert", "/qs-engine-test:interfaces/route=c", route), where="first"))
    prefixes = lambda: [r.findtext(q("prefix")) for r in replica.root.iter(q("route"))]  # noqa: E731
    assert prefixes() == ["c", "a", "b"]
    replica.update(patch(("move", "/qs-engine-test:interfaces/route=c", None), where="after",
                         point="/qs-engine-test:interfaces/route=a"))
    assert prefixes() == ["a", "c", "b"]
    replica.update(patch(("remove", "/qs-engine-test:interfaces/route=x", None),
                         ("remove", "/qs-engine-test:interfaces/route=b", None)))
    assert prefixes() == ["a", "c"]


@pytest.mark.parametrize("edit, tag", [
    (("delete", "/qs-engine-test:interfaces/interface=nope", None), "data-missing"),
    (("create", "/qs-engine-test:interfaces/interface=e1",
      f'<interface xmlns="{ENGINE_NS}"><name>e1</name></interface>'), "data-exists"),
    (("replace", "/qs-engine-test:interfaces/no-such-node", "<x/>"), "unknown-element"),
    (("replace", "/qs-engine-test:system/hostname", None), "missing-element"),
])
def test_an_edit_the_copy_cannot_follow_leaves_it_as_it_was(engine_schema, edit, tag):
    replica = Replica(engine_schema)
    replica.update(sync(f'<interfaces xmlns="{ENGINE_NS}"><interface><name>e1</name></interface></interfaces>'))
    before = etree.tostring(replica.root)
    good = ("replace", "/qs-engine-test:system/hostname", f'<hostname xmlns="{ENGINE_NS}">h</hostname>')
    with pytest.raises(RPCError) as caught:
        replica.update(patch(good, edit))
    assert caught.value.tag == tag
    assert etree.tostring(replica.root) == before  # the good edit before it is not kept either


def test_reordering_a_user_ordered_list_is_pushed_as_moves_and_inserts(engine, engine_schema):
    """Routes and name servers are ordered by the user: a new entry comes as an insert at its
    place, a reordering as moves; the copy keeps the server's order."""
    route = "<route><prefix>{0}</prefix><out-interface>e1</out-interface></route>"

    async def scenario() -> None:
        nc = await NetconfClient.connect("127.0.0.1", engine.port, "admin", "admin-pw")
        try:
            await nc.edit_config(interfaces("<interface><name>e1</name></interface>"
                                            + "".join(route.format(p) for p in "abcd")))
            sub = await nc.establish_subscription("running", xpath=SELECTION, namespaces={"q": ENGINE_NS},
                                                  on_change=True)
            replica = Replica(engine_schema)
            replica.update(await sub.next(5))
            # a deleted; then the list replaced in a new order, twice.
            await nc.edit_config(interfaces('<route nc:operation="delete"><prefix>a</prefix></route>'))
            for order in ("dabc", "dabxc"):
                await nc.edit_config(f'<interfaces xmlns="{ENGINE_NS}" xmlns:nc="{NC}" nc:operation="replace">'
                                     f'<interface><name>e1</name></interface>'
                                     + "".join(route.format(p) for p in order) + "</interfaces>")
            operations = []
            for _ in range(3):
                update = await sub.next(5)
                # The models accept it as the notification they define (point and where included).
                engine.server.schema.ctx.parse_op_mem("xml", etree.tostring(update).decode(),
                                                      libyang.DataType.NOTIF_YANG).free()
                operations.append([e.findtext(f"{{{YP}}}operation") for e in update.iter(f"{{{YP}}}edit")])
                replica.update(update)
            # bcd -> dabc: d moved first (b, c keep their order), a inserted after it; then x after b.
            assert operations == [["delete"], ["move", "insert"], ["insert"]]
            server = await nc.get_config(filter=("xpath", SELECTION, {"q": ENGINE_NS}))
            assert normal(replica.root) == normal(server)
            assert [r.findtext(q("prefix")) for r in replica.root.iter(q("route"))] == list("dabxc")
        finally:
            await nc.close_session()
    engine.loop.run(scenario())
