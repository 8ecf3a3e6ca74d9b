"""Schema.canonical validates a whole datastore, but parses again only the top-level nodes it
has not seen lately (the others are copied from libyang trees parsed before). These tests
check that the copies change nothing a full parse would catch: references between top-level
nodes, duplicate instances, and that what comes out is what libyang prints.
"""
from __future__ import annotations

import pathlib

import pytest
from lxml import etree

from netconf_core.errors import RPCError
from netconf_core.schema import Schema, free_tree, print_xml

NS = "urn:qstrata:test:schema-cache"
MODULE = f"""module qs-schema-cache {{
  yang-version 1.1;
  namespace "{NS}";
  prefix sc;
  container pools {{
    list pool {{ key name; leaf name {{ type string; }} leaf size {{ type uint16; }} }}
  }}
  container policy {{
    leaf default-pool {{ type leafref {{ path "/sc:pools/sc:pool/sc:name"; }} }}
  }}
  list site {{ key id; leaf id {{ type string; }} leaf label {{ type string; }} }}
}}
"""


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> Schema:
    directory: pathlib.Path = tmp_path_factory.mktemp("yang")
    (directory / "qs-schema-cache.yang").write_text(MODULE)
    return Schema(["qs-schema-cache"], [directory])


def tree(*children: str) -> etree._Element:
    return etree.fromstring('<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                            + "".join(c.replace("<sc>", f' xmlns="{NS}"') for c in children) + "</data>")


POOLS_AB = "<pools<sc>><pool><name>a</name></pool><pool><name>b</name></pool></pools>"
POOLS_A = "<pools<sc>><pool><name>a</name></pool></pools>"
POLICY_B = "<policy<sc>><default-pool>b</default-pool></policy>"


def test_an_unchanged_node_is_still_checked_against_the_changed_ones(schema):
    schema.canonical(tree(POOLS_AB, POLICY_B), config_only=True)  # both nodes are now known
    with pytest.raises(RPCError) as caught:  # policy is copied, pools parsed again: b is gone
        schema.canonical(tree(POOLS_A, POLICY_B), config_only=True)
    assert caught.value.tag == "data-missing" and caught.value.app_tag == "instance-required"
    assert caught.value.path == "/qs-schema-cache:policy/default-pool"


def test_duplicate_top_level_instances_are_refused_not_merged(schema):
    schema.canonical(tree(POOLS_A), config_only=True)
    with pytest.raises(RPCError):
        schema.canonical(tree(POOLS_A, POOLS_A), config_only=True)
    site = "<site<sc>><id>s1</id><label>{}</label></site>"
    with pytest.raises(RPCError):
        schema.canonical(tree(site.format("x"), site.format("y")), config_only=True)


def test_the_output_is_libyangs_print_and_a_canonical_input_comes_back_as_is(schema):
    canonical = tree(POOLS_AB, POLICY_B)
    assert schema.canonical(canonical, config_only=True) is canonical
    assert schema.canonical(canonical, config_only=True) is canonical  # from the copies this time
    sizes = tree("<pools<sc>><pool><name>a</name><size>+07</size></pool></pools>")
    printed = schema.canonical(sizes, config_only=True)
    assert printed is not sizes and printed.findtext(f".//{{{NS}}}size") == "7"


def test_a_bad_value_in_a_new_node_is_reported_with_its_path(schema):
    schema.canonical(tree(POOLS_A), config_only=True)
    with pytest.raises(RPCError) as caught:
        schema.canonical(tree(POOLS_A, "<site<sc>><id>s1</id><label>x</label><colour>red</colour></site>"),
                         config_only=True)
    assert caught.value.tag in ("unknown-element", "bad-element", "invalid-value"), caught.value


def whole_document_print(schema: Schema, root: etree._Element) -> bytes:
    """The reference: the document parsed and validated by libyang in one go, then printed."""
    dnode = schema.ctx.parse_data_mem(b"".join(etree.tostring(c) for c in root).decode(), "xml", strict=True,
                                      no_state=True, validate_present=False)
    try:
        return print_xml(dnode).encode()
    finally:
        free_tree(dnode)


@pytest.mark.parametrize("children", [
    (POLICY_B, POOLS_AB),  # another order than libyang's
    (POOLS_AB, POLICY_B),
    ("<site<sc>><id>s2</id></site>", POOLS_AB, "<site<sc>><id>s1</id><label>x</label></site>", POLICY_B),
    ("<pools<sc>><pool><size>007</size><name>b</name></pool></pools>",),  # key last, value not canonical
])
def test_what_comes_out_is_what_a_whole_parse_prints(schema, children):
    for _ in range(2):  # the second time, every piece is a copy
        out = schema.canonical(tree(*children), config_only=True)
        assert b"".join(etree.tostring(c) for c in out) == whole_document_print(schema, tree(*children))


def test_a_closed_cache_frees_its_trees_and_validation_goes_on(tmp_path):
    """What the exit hook does before libyang's contexts go: after it, nothing is cached and
    nothing is freed twice."""
    (tmp_path / "qs-schema-cache.yang").write_text(MODULE)
    own = Schema(["qs-schema-cache"], [tmp_path])
    own.canonical(tree(POOLS_AB, POLICY_B), config_only=True)
    assert own._subtrees._trees
    own._subtrees.close()
    assert not own._subtrees._trees
    out = own.canonical(tree(POOLS_AB, POLICY_B), config_only=True)
    assert b"".join(etree.tostring(c) for c in out) == whole_document_print(own, tree(POOLS_AB, POLICY_B))
    assert not own._subtrees._trees
    with pytest.raises(RPCError):
        own.canonical(tree(POOLS_A, "<policy<sc>><default-pool>b</default-pool></policy>"), config_only=True)


def test_a_server_failing_at_start_up_exits_cleanly(tmp_path):
    """Parsed trees were cached (a valid running) when start-up fails (a damaged startup):
    the process exits with its error, never a crash while the interpreter shuts down."""
    import subprocess
    import sys

    from conftest import ENGINE_NS, TEST_YANG
    base = "urn:ietf:params:xml:ns:netconf:base:1.0"
    (tmp_path / "running.xml").write_text(f'<data xmlns="{base}"><system xmlns="{ENGINE_NS}">'
                                          "<hostname>cached</hostname></system></data>")
    (tmp_path / "startup.xml").write_text(f'<data xmlns="{base}"><system xmlns="{ENGINE_NS}"><mtu>5</mtu>'
                                          "</system></data>")
    qstrata = str(pathlib.Path(sys.executable).with_name("qstrata"))
    codes = []
    for _ in range(12):
        result = subprocess.run([qstrata, "serve", "--yang", str(TEST_YANG), "--module", "qs-engine-test",
                                 "--port", "0", "--password=x", "--datastore-dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=60)
        codes.append(result.returncode)
    assert codes == [2] * 12, codes
    assert "startup.xml: invalid startup configuration" in result.stderr and "Traceback" not in result.stderr
