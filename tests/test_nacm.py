"""RFC 8341 NACM decisions on real configurations and data, all validated by libyang first."""
import copy
import pathlib

import libyang
import pytest
from lxml import etree

from netconf_core.nacm import Nacm, NacmConfigError, NacmCounters
from netconf_core.ns import BASE as BASE_NS, NACM as NACM_NS, YANG_XML as YANG_NS
from netconf_core.yangdirs import SEARCH_DIRS

TEST_YANG_DIR = pathlib.Path(__file__).parent / "yang"
QNT = "urn:qstrata:yang:qs-nacm-test"


def q(name: str) -> str:
    return f"{{{QNT}}}{name}"


@pytest.fixture(scope="module")
def ctx():
    context = libyang.Context(":".join(str(d) for d in [TEST_YANG_DIR, *SEARCH_DIRS]))
    for name in ("ietf-netconf", "ietf-netconf-acm", "qs-nacm-test"):
        context.load_module(name)
    yield context
    context.destroy()


def validated(ctx, xml: str, *, config_only: bool) -> etree._Element:
    """The top-level nodes in `xml`, validated by libyang and printed by it (as the server
    holds them), under a NETCONF <data> wrapper."""
    dnode = ctx.parse_data_mem(xml, "xml", strict=True, no_state=config_only, validate_present=True)
    try:
        printed = dnode.print_mem("xml", with_siblings=True)
    finally:
        dnode.free()
    return etree.fromstring(f'<data xmlns="{BASE_NS}">{printed}</data>')


def nacm_config(ctx, body: str) -> etree._Element:
    xml = f'<nacm xmlns="{NACM_NS}" xmlns:qnt="{QNT}">{body}</nacm>'
    return validated(ctx, xml, config_only=True)[0]


def rule(name, action, *, module=None, rpc=None, notification=None, path=None, ops=None) -> str:
    parts = [f"<name>{name}</name>"]
    if module:
        parts.append(f"<module-name>{module}</module-name>")
    if rpc:
        parts.append(f"<rpc-name>{rpc}</rpc-name>")
    if notification:
        parts.append(f"<notification-name>{notification}</notification-name>")
    if path:
        parts.append(f"<path>{path}</path>")
    if ops:
        parts.append(f"<access-operations>{ops}</access-operations>")
    parts.append(f"<action>{action}</action>")
    return "<rule>" + "".join(parts) + "</rule>"


def rule_list(name, groups, *rules) -> str:
    return (f"<rule-list><name>{name}</name>" + "".join(f"<group>{g}</group>" for g in groups)
            + "".join(rules) + "</rule-list>")


GROUPS = """
<groups>
  <group><name>admin</name><user-name>ada</user-name></group>
  <group><name>operator</name><user-name>olga</user-name></group>
  <group><name>monitor</name><user-name>mona</user-name><user-name>mike</user-name></group>
  <group><name>auditor</name><user-name>mike</user-name></group>
</groups>
"""

# admin: everything. monitor: read-only, port 3 hidden, no actions, no edit-config.
# auditor: would see port 3 (but monitor's list comes first) and the nacm settings.
# operator: ports and cross-connects, ping, port-down. everyone: no ping, no port-down.
CONFIG = GROUPS + "".join([
    rule_list("admin", ["admin"], rule("everything", "permit", module="*", ops="*")),
    rule_list(
        "monitor", ["monitor"],
        rule("hide-port-3", "deny", module="qs-nacm-test", path="/qnt:switch/qnt:port[qnt:id='3']", ops="read"),
        rule("read-ports", "permit", module="qs-nacm-test", path="/qnt:switch/qnt:port", ops="read"),
        rule("no-actions", "deny", path="/qnt:switch", ops="exec"),
        rule("no-edits", "deny", module="ietf-netconf", rpc="edit-config", ops="exec"),
    ),
    rule_list(
        "auditor", ["auditor"],
        rule("see-port-3", "permit", path="/qnt:switch/qnt:port[qnt:id='3']", ops="read"),
        rule("read-nacm", "permit", module="ietf-netconf-acm", ops="read"),
    ),
    rule_list(
        "operator", ["operator"],
        rule("ports", "permit", module="qs-nacm-test", path="/qnt:switch/qnt:port", ops="*"),
        rule("cross-connects", "permit", module="qs-nacm-test", path="/qnt:switch/qnt:cross-connect",
             ops="create update delete"),
        rule("rename", "permit", path="/qnt:switch/qnt:name", ops="update"),
        rule("ping", "permit", module="qs-nacm-test", rpc="ping", ops="exec"),
        rule("port-down", "permit", module="qs-nacm-test", notification="port-down", ops="read"),
    ),
    rule_list(
        "everyone", ["*"],
        rule("no-ping", "deny", module="qs-nacm-test", rpc="ping", ops="exec"),
        rule("no-port-down", "deny", module="*", notification="port-down", ops="read"),
        rule("wrong-module", "deny", module="qs-nacm-test", rpc="get", ops="exec"),
    ),
])

SWITCH_CONFIG = f"""
<switch xmlns="{QNT}">
  <name>sw-1</name>
  <firmware>v1</firmware>
  <admin-secret>hunter2</admin-secret>
  <port><id>1</id><enabled>true</enabled></port>
  <port><id>2</id><enabled>false</enabled></port>
  <port><id>3</id><enabled>true</enabled></port>
  <cross-connect><name>cc1</name><in-port>1</in-port><out-port>2</out-port></cross-connect>
</switch>
"""

SWITCH_STATE = SWITCH_CONFIG.replace("<enabled>true</enabled></port>",
                                     "<enabled>true</enabled><loss-db>0.75</loss-db></port>")


@pytest.fixture(scope="module")
def config(ctx):
    return nacm_config(ctx, CONFIG)


@pytest.fixture
def nacm(ctx, config):
    return Nacm(ctx, config)


@pytest.fixture(scope="module")
def running(ctx, config):
    """Configuration: the switch and the NACM settings themselves."""
    return validated(ctx, SWITCH_CONFIG + etree.tostring(config, encoding="unicode"), config_only=True)


@pytest.fixture(scope="module")
def get_result(ctx, config):
    """A get reply's data: configuration and state, the NACM counters included."""
    nacm = copy.deepcopy(config)
    for counter in ("denied-operations", "denied-data-writes", "denied-notifications"):
        etree.SubElement(nacm, f"{{{NACM_NS}}}{counter}").text = "0"
    return validated(ctx, SWITCH_STATE + etree.tostring(nacm, encoding="unicode"), config_only=False)


def visible(tree: etree._Element) -> set[str]:
    """What a reader sees: top-level nodes, switch leaves and ports by id."""
    seen = {etree.QName(top).localname for top in tree}
    switch = tree.find(q("switch"))
    if switch is not None:
        seen |= {etree.QName(c).localname for c in switch if c.tag not in (q("port"), q("cross-connect"))}
        seen |= {f"port {p.findtext(q('id'))}" for p in switch.findall(q("port"))}
        seen |= {f"cc {c.findtext(q('name'))}" for c in switch.findall(q("cross-connect"))}
    return seen


def node(tree: etree._Element, path: str) -> etree._Element:
    found = tree.find(path, namespaces={"q": QNT})
    assert found is not None, path
    return found


def edited(tree: etree._Element, change) -> etree._Element:
    after = copy.deepcopy(tree)
    change(after.find(q("switch")))
    return after


# --- groups and defaults -------------------------------------------------------


def test_groups_of_users(nacm):
    assert nacm.groups_of("mike") == ["monitor", "auditor"]
    assert nacm.groups_of("olga") == ["operator"]
    assert nacm.groups_of("nobody") == []


def test_user_in_no_group_falls_to_defaults_even_past_star_rule_lists(nacm, get_result, running):
    # The "*" rule-list denies ping and port-down, but a user in no group never reaches it.
    assert nacm.may_exec("nobody", "qs-nacm-test", "ping")
    assert nacm.may_notify("nobody", "qs-nacm-test", "port-down")
    # read-default permit, except the default-deny-all nodes (admin-secret, the nacm container).
    assert visible(nacm.prune("nobody", get_result)) == {
        "switch", "name", "firmware", "port 1", "port 2", "port 3", "cc cc1"}
    # write-default deny.
    assert not nacm.may_write("nobody", "update", node(running, "q:switch/q:name"))
    # kill-session and delete-config are denied by default; close-session is always allowed.
    assert not nacm.may_exec("nobody", "ietf-netconf", "kill-session")
    assert not nacm.may_exec("nobody", "ietf-netconf", "delete-config")
    assert nacm.may_exec("nobody", "ietf-netconf", "close-session")
    assert nacm.may_exec("nobody", "ietf-netconf", "get")


def test_no_configuration_means_rfc8341_defaults(ctx, running, get_result):
    nacm = Nacm(ctx, None)
    assert (nacm.enabled, nacm.read_default, nacm.write_default, nacm.exec_default) == (True, True, False, True)
    assert nacm.groups_of("ada") == []
    assert visible(nacm.prune("ada", get_result)) == {
        "switch", "name", "firmware", "port 1", "port 2", "port 3", "cc cc1"}
    assert not nacm.may_write("ada", "update", node(running, "q:switch/q:port/q:enabled"))
    assert nacm.may_exec("ada", "qs-nacm-test", "ping")
    assert not nacm.may_exec("ada", "qs-nacm-test", "factory-reset")


def test_enable_nacm_false_permits_everything(ctx, running, get_result):
    nacm = Nacm(ctx, nacm_config(ctx, "<enable-nacm>false</enable-nacm>" + CONFIG))
    assert nacm.prune("mona", get_result) is get_result  # nothing to prune: no copy
    assert nacm.may_write("mona", "update", node(running, "q:switch/q:firmware"))
    assert nacm.may_write("nobody", "delete", node(running, "{%s}nacm" % NACM_NS))
    assert nacm.may_exec("nobody", "ietf-netconf", "kill-session")
    assert nacm.may_exec("mona", "qs-nacm-test", "factory-reset")
    assert nacm.may_notify("mona", "qs-nacm-test", "tamper-alarm")
    assert nacm.counters == NacmCounters()


def test_recovery_user_bypasses_nacm(ctx, config, running, get_result):
    nacm = Nacm(ctx, config, recovery_user="root")
    assert nacm.may_exec("root", "ietf-netconf", "kill-session")
    assert nacm.may_write("root", "update", node(running, "q:switch/q:admin-secret"))
    assert "admin-secret" in visible(nacm.prune("root", get_result))
    assert not nacm.may_exec("nobody", "ietf-netconf", "kill-session")


# --- reads ---------------------------------------------------------------------


def test_read_only_group_reads_but_deny_rule_prunes_subtree(nacm, get_result):
    pruned = nacm.prune("mona", get_result)
    assert visible(pruned) == {"switch", "name", "firmware", "port 1", "port 2", "cc cc1"}
    assert pruned.find(f"{q('switch')}/{q('port')}/{q('loss-db')}") is not None  # state of port 1 kept
    assert "port 3" in visible(get_result)  # the input is left alone


def test_first_matching_rule_list_wins(nacm, get_result):
    # mike is a monitor and an auditor: monitor's list comes first and hides port 3,
    # auditor's later permit for port 3 is never reached; its nacm rule still applies.
    assert visible(nacm.prune("mike", get_result)) == {
        "switch", "name", "firmware", "port 1", "port 2", "cc cc1", "nacm"}


def test_first_matching_rule_in_a_list_wins(ctx, get_result):
    def config(*rules):
        return nacm_config(ctx, GROUPS + rule_list("monitor", ["monitor"], *rules))

    hide = rule("hide-port-3", "deny", path="/qnt:switch/qnt:port[qnt:id='3']", ops="read")
    show = rule("read-ports", "permit", path="/qnt:switch/qnt:port", ops="read")
    assert "port 3" not in visible(Nacm(ctx, config(hide, show)).prune("mona", get_result))
    assert "port 3" in visible(Nacm(ctx, config(show, hide)).prune("mona", get_result))


def test_module_name_match_opens_default_deny_all_container(nacm, get_result):
    # read-nacm names module ietf-netconf-acm: the nacm container is default-deny-all.
    assert "nacm" in visible(nacm.prune("mike", get_result))
    assert "nacm" not in visible(nacm.prune("mona", get_result))
    assert "nacm" in visible(nacm.prune("ada", get_result))


def test_list_entry_with_unreadable_key_is_dropped_whole(ctx, get_result):
    config = nacm_config(ctx, GROUPS + rule_list(
        "monitor", ["monitor"], rule("hide-ids", "deny", path="/qnt:switch/qnt:port/qnt:id", ops="read")))
    assert visible(Nacm(ctx, config).prune("mona", get_result)) == {"switch", "name", "firmware", "cc cc1"}


# --- writes --------------------------------------------------------------------


def test_read_only_group_may_not_write_anything(nacm, running):
    for op, path in [("update", "q:switch/q:port/q:enabled"), ("create", "q:switch/q:port"),
                     ("delete", "q:switch/q:cross-connect"), ("update", "q:switch/q:name")]:
        assert not nacm.may_write("mona", op, node(running, path)), (op, path)
    assert nacm.counters.denied_data_writes == 4


def test_read_write_group_writes_what_its_rules_allow(nacm, running):
    assert nacm.may_write("olga", "update", node(running, "q:switch/q:port/q:enabled"))
    assert nacm.may_write("olga", "create", node(running, "q:switch/q:port[q:id='3']"))
    assert nacm.may_write("olga", "delete", node(running, "q:switch/q:cross-connect/q:out-port"))
    assert nacm.may_write("olga", "update", node(running, "q:switch/q:name"))
    assert not nacm.may_write("olga", "delete", node(running, "q:switch/q:name"))  # rename is update only
    assert not nacm.may_write("olga", "update", node(running, "q:switch/q:firmware"))
    assert not nacm.may_write("olga", "create", node(running, "{%s}nacm/{%s}groups" % (NACM_NS, NACM_NS)))
    assert nacm.may_write("ada", "create", node(running, "{%s}nacm/{%s}groups" % (NACM_NS, NACM_NS)))


def test_default_deny_write_and_deny_all_hold_when_write_default_is_permit(ctx, running):
    nacm = Nacm(ctx, nacm_config(ctx, "<write-default>permit</write-default>" + GROUPS))
    assert nacm.may_write("nobody", "update", node(running, "q:switch/q:name"))
    assert nacm.may_write("mona", "create", node(running, "q:switch/q:port"))
    assert not nacm.may_write("mona", "update", node(running, "q:switch/q:firmware"))
    assert not nacm.may_write("mona", "update", node(running, "q:switch/q:admin-secret"))
    assert not nacm.may_write("mona", "delete", node(running, "{%s}nacm/{%s}groups/{%s}group" % ((NACM_NS,) * 3)))


def test_may_write_refuses_what_is_not_a_write(nacm, running):
    with pytest.raises(ValueError, match="create, update, delete"):
        nacm.may_write("olga", "read", node(running, "q:switch/q:name"))
    stray = etree.SubElement(copy.deepcopy(running), "{urn:example:unknown}thing")
    with pytest.raises(ValueError, match="not a data node"):
        nacm.may_write("olga", "create", stray)


def test_denied_write_path_names_first_forbidden_change(nacm, running):
    def new_port_4(switch):
        port = etree.SubElement(switch, q("port"))
        etree.SubElement(port, q("id")).text = "4"

    def operator_changes(switch):
        switch.find(f"{q('port')}/{q('enabled')}").text = "false"
        switch.find(q("name")).text = "sw-renamed"
        switch.remove(switch.find(q("cross-connect")))
        new_port_4(switch)

    assert nacm.denied_write_path("olga", running, edited(running, operator_changes)) is None
    assert nacm.denied_write_path("mona", running, edited(running, new_port_4)) == "/qs-nacm-test:switch/port[id='4']"
    firmware = edited(running, lambda s: setattr(s.find(q("firmware")), "text", "v2"))
    assert nacm.denied_write_path("olga", running, firmware) == "/qs-nacm-test:switch/firmware"
    assert nacm.denied_write_path("olga", running, running) is None
    assert nacm.counters.denied_data_writes == 2


def test_deleting_a_subtree_needs_delete_access_to_every_node_in_it(nacm, running):
    without_switch = copy.deepcopy(running)
    without_switch.remove(without_switch.find(q("switch")))
    assert nacm.denied_write_path("olga", running, without_switch) == "/qs-nacm-test:switch/name"
    assert nacm.denied_write_path("ada", running, without_switch) is None


def test_first_port_may_be_created_under_an_absent_non_presence_container(ctx, nacm, running):
    empty = etree.Element(f"{{{BASE_NS}}}data")
    one_port = validated(ctx, f'<switch xmlns="{QNT}"><port><id>7</id></port></switch>', config_only=True)
    assert nacm.denied_write_path("olga", empty, one_port) is None
    assert nacm.denied_write_path("mona", empty, one_port) == "/qs-nacm-test:switch/port[id='7']"


# --- operations, actions, notifications -----------------------------------------


def test_rpc_name_rules(nacm):
    assert nacm.may_exec("olga", "qs-nacm-test", "ping")  # operator's list comes before everyone's
    assert not nacm.may_exec("mona", "qs-nacm-test", "ping")  # everyone's deny
    assert not nacm.may_exec("mona", "ietf-netconf", "edit-config")
    assert nacm.may_exec("olga", "ietf-netconf", "edit-config")
    # wrong-module names get in qs-nacm-test: it does not match ietf-netconf's get.
    assert nacm.may_exec("mona", "ietf-netconf", "get")
    assert nacm.counters.denied_operations == 2


def test_default_deny_all_operations_need_an_explicit_rule(nacm):
    for module, name in [("qs-nacm-test", "factory-reset"), ("ietf-netconf", "kill-session"),
                         ("ietf-netconf", "delete-config")]:
        assert not nacm.may_exec("olga", module, name), name
        assert nacm.may_exec("ada", module, name), name
    assert nacm.may_exec("mona", "ietf-netconf", "close-session")


def test_actions_are_checked_by_data_node_rules(ctx, nacm):
    request = f'<switch xmlns="{QNT}"><port><id>1</id><reset/></port></switch>'
    ctx.parse_op_mem("xml", request, dtype=libyang.DataType.RPC_YANG).free()  # a valid action request
    action = etree.fromstring(f'<action xmlns="{YANG_NS}">{request}</action>')
    reset = node(action, "q:switch/q:port/q:reset")
    assert nacm.may_exec_action("olga", reset)
    assert not nacm.may_exec_action("mona", reset)  # no-actions
    assert nacm.may_exec_action("nobody", reset)  # exec-default permit
    with pytest.raises(ValueError, match="not an action"):
        nacm.may_exec_action("olga", node(action, "q:switch/q:port"))


def test_notification_rules(nacm):
    assert nacm.may_notify("olga", "qs-nacm-test", "port-down")
    assert not nacm.may_notify("mona", "qs-nacm-test", "port-down")
    assert not nacm.may_notify("olga", "qs-nacm-test", "tamper-alarm")  # default-deny-all
    assert nacm.may_notify("ada", "qs-nacm-test", "tamper-alarm")
    assert nacm.may_notify("mona", "nc-notifications", "replayComplete")
    assert nacm.counters.denied_notifications == 2


def test_read_default_deny_drops_notifications_and_data(ctx, get_result):
    nacm = Nacm(ctx, nacm_config(ctx, "<read-default>deny</read-default>" + GROUPS))
    assert not nacm.may_notify("mona", "qs-nacm-test", "port-down")
    assert nacm.may_notify("mona", "nc-notifications", "replayComplete")
    assert len(nacm.prune("mona", get_result)) == 0


def test_close_session_is_permitted_whatever_the_rules(ctx):
    nacm = Nacm(ctx, nacm_config(ctx, "<exec-default>deny</exec-default>" + GROUPS + rule_list(
        "monitor", ["monitor"], rule("no-operations", "deny", rpc="*", ops="exec"))))
    assert nacm.may_exec("mona", "ietf-netconf", "close-session")
    assert nacm.may_exec("nobody", "ietf-netconf", "close-session")
    assert not nacm.may_exec("mona", "ietf-netconf", "get")
    assert not nacm.may_exec("nobody", "ietf-netconf", "get")  # exec-default deny


def test_counters_survive_a_new_configuration(ctx, config):
    counters = NacmCounters()
    Nacm(ctx, config, counters=counters).may_exec("olga", "ietf-netconf", "kill-session")
    Nacm(ctx, None, counters=counters).may_exec("olga", "ietf-netconf", "kill-session")
    assert counters.denied_operations == 2


# --- configurations NACM cannot enforce --------------------------------------------


@pytest.mark.parametrize("path, message", [
    ("/other:switch", "prefix 'other', which is not declared"),
    ("/qnt:switch/qnt:port[1]", "is not \\[prefix:key='value'\\]"),
    ("/qnt:switch//qnt:port", "is not prefix:name"),
    ("qnt:switch", "must start with '/'"),
    ("/qnt:switch/qnt:port[qnt:id='3'", "unclosed quote or bracket"),
])
def test_rule_paths_that_are_not_node_instance_identifiers_are_refused(ctx, path, message):
    # Built by hand: libyang already refuses some of these, NACM must too.
    config = etree.fromstring(
        f'<nacm xmlns="{NACM_NS}" xmlns:qnt="{QNT}">'
        + rule_list("l", ["*"], rule("r", "deny", path=path.replace("<", "&lt;"))) + "</nacm>")
    with pytest.raises(NacmConfigError, match=message):
        Nacm(ctx, config)
