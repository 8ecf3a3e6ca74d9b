"""An identityref of a module's own identities, written with a prefix that the leaf itself
declares for its own namespace (`<role xmlns:qqn="...qi-quantum-node">qqn:repeater</role>`,
as libyang prints it and clients write it): lxml drops such a declaration as redundant when
the leaf, or a subtree holding it, moves into a tree that declares the namespace, which left
the value's prefix unbound once the engine copied or re-read the leaf. Over a real NETCONF
session and at the copy itself. The edits are sent as written with the engine's client (which
sends the operation's text as parsed): ncclient builds its <rpc> with lxml, which drops the
declaration before it leaves; ncclient reads the result."""
from __future__ import annotations

from lxml import etree
from ncclient.xml_ import to_ele

from conftest import start_server
from models.ns import QUANTUM_NODE as QN
from netconf_core import NetconfClient, Schema
from netconf_core.datastore import copy_in_scope
from netconf_core.ns import identity

BASE = "urn:ietf:params:xml:ns:netconf:base:1.0"
CONFIG = (f'<config xmlns="{BASE}"><quantum-node xmlns="{QN}">'
          f'<role xmlns:qqn="{QN}">qqn:repeater</role>'
          '<interfaces><interface><name>east</name></interface></interfaces>'
          '<elementary-links><link><link-id>l1</link-id><interface>east</interface><peer-node>b</peer-node>'
          f'<type xmlns:q="{QN}">q:double-click</type></link></elementary-links></quantum-node></config>')


def test_an_own_prefixed_identityref_survives_edits_and_reads(loop_thread, tmp_path):
    running = start_server(loop_thread, Schema(["qi-quantum-node"]), datastore_dir=tmp_path / "ds")
    try:
        async def edit():
            async with await NetconfClient.connect("127.0.0.1", running.port, "admin", "admin-pw") as nc:
                await nc.rpc(f'<edit-config xmlns="{BASE}"><target><running/></target>{CONFIG}</edit-config>')
                # A second edit re-validates the stored tree, whose values must still resolve.
                await nc.rpc(f'<edit-config xmlns="{BASE}"><target><running/></target><config>'
                             f'<quantum-node xmlns="{QN}"><site>r1</site></quantum-node></config></edit-config>')
        loop_thread.run(edit())
        with running.connect() as m:
            node = to_ele(m.get_config(source="running").xml).find(f".//{QN('quantum-node')}")
        for leaf, name in ((node.find(QN("role")), "repeater"),
                           (node.find(f"{QN('elementary-links')}/{QN('link')}/{QN('type')}"), "double-click")):
            prefix, _, value = leaf.text.rpartition(":")
            assert value == name and leaf.nsmap.get(prefix or None) == QN, etree.tostring(leaf)
        assert identity(node.findtext(QN("role"))) == "repeater"
    finally:
        loop_thread.run(running.server.stop())


def test_a_copied_leaf_keeps_its_value_in_its_new_tree():
    schema = Schema(["qi-quantum-node"])
    source = etree.fromstring(CONFIG)
    role = source.find(f".//{QN('role')}")
    node = etree.Element(QN("quantum-node"), nsmap={None: QN})
    node.append(copy_in_scope(role))
    data = etree.Element("{urn:ietf:params:xml:ns:netconf:base:1.0}data")
    data.append(node)
    out = schema.canonical(data, config_only=True)   # refused if the value's prefix were unbound
    assert identity(out.findtext(f"{QN('quantum-node')}/{QN('role')}")) == "repeater"
    assert role.text == "qqn:repeater"   # the edit itself is left as it was
