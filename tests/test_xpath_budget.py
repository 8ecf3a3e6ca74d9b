"""xpath filters are bounded and do not hold the event loop: an expression whose estimated
cost is over the server's budget is refused with a precise rpc-error; one within it is
evaluated in a worker thread, so the other servers of the process (which share the event
loop) and the other users of the same server are answered meanwhile."""
from __future__ import annotations

import threading
import time

import pytest
from ncclient.operations.rpc import RPCError as NcRPCError
from ncclient.xml_ import to_ele

from conftest import ENGINE_NS, start_server
from netconf_core.filters import XPATH_COST_APP_TAG, xpath_cost

BOMB = "//*[count(//*[count(//*) > 0]) > 0]"
NS = {"e": ENGINE_NS}


def interfaces(count: int) -> str:
    entries = "".join(f"<interface><name>if{i}</name><vlan>{i + 1}</vlan></interface>" for i in range(count))
    return f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><interfaces xmlns="{ENGINE_NS}">{entries}' \
           f'</interfaces></config>'


@pytest.fixture
def two_servers(loop_thread, engine_schema):
    """Two servers on one event loop, as the devices and controllers of one process are."""
    servers = [start_server(loop_thread, engine_schema) for _ in range(2)]
    yield servers
    for running in servers:
        loop_thread.run(running.server.stop())


def test_cost_estimate_counts_nested_descendant_scans():
    assert xpath_cost(BOMB, 10) == (3, 1000)
    assert xpath_cost("//*[count(//*) > 0]", 10) == (2, 100)
    assert xpath_cost("/e:interfaces/e:interface[e:name='a[//]']", 10) == (1, 10)  # literals are not scans
    assert xpath_cost("//e:interface[e:vlan='1']", 10) == (1, 10)


def test_xpath_bomb_is_refused_precisely_while_other_requests_are_answered(two_servers):
    bombed, other = two_servers
    with bombed.connect() as admin:
        admin.edit_config(target="running", config=interfaces(50))
    outcome: dict = {}

    def bomb() -> None:
        start = time.monotonic()
        with bombed.connect("reader", "reader-pw") as reader:
            try:
                reader.get(filter=("xpath", BOMB))
            except NcRPCError as err:
                outcome["error"] = err
            outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=bomb)
    thread.start()
    with other.connect() as m:
        start = time.monotonic()
        m.get_config("running")
        assert time.monotonic() - start < 10
    thread.join(60)
    assert not thread.is_alive()
    err = outcome["error"]
    assert err.tag == "too-big" and err.app_tag == XPATH_COST_APP_TAG
    assert "3 nested descendant scans" in err.message and "budget" in err.message
    assert outcome["seconds"] < 20
    with bombed.connect("reader", "reader-pw") as reader:  # ordinary xpath filters still work
        data = to_ele(reader.get_config("running", filter=(
            "xpath", ({"q": ENGINE_NS}, "/q:interfaces/q:interface[q:name='if7']"))).data_xml)
        assert data.xpath("//e:interface/e:vlan/text()", namespaces=NS) == ["8"]
        data = to_ele(reader.get(filter=("xpath", ({"q": ENGINE_NS}, "//q:interface[q:vlan='3']/q:name"))).data_xml)
        assert data.xpath("//e:interface/e:name/text()", namespaces=NS) == ["if2"]


def test_costly_xpath_within_budget_runs_off_the_event_loop(two_servers):
    """With a budget that lets the bomb run (seconds of libyang work), the other server and
    another user of the same server are answered while it runs, and its answer is right."""
    bombed, other = two_servers
    bombed.server.xpath_budget = 10 ** 15
    with bombed.connect() as admin:
        admin.edit_config(target="running", config=interfaces(80))
    outcome: dict = {}
    done = threading.Event()

    def bomb() -> None:
        with bombed.connect("reader", "reader-pw") as reader:
            reader.timeout = 120  # seconds of work on a busy machine
            outcome["data"] = to_ele(reader.get_config("running", filter=("xpath", BOMB)).data_xml)
        done.set()

    thread = threading.Thread(target=bomb)
    thread.start()
    answered_meanwhile = []
    with other.connect() as m, bombed.connect() as admin:
        for _ in range(20):
            if done.is_set():
                break
            start = time.monotonic()
            m.get_config("running")
            admin.get_config("running", filter=("xpath", ({"q": ENGINE_NS}, "/q:interfaces/q:interface[q:name='if1']")))
            assert time.monotonic() - start < 10
            answered_meanwhile.append(not done.is_set())
            time.sleep(0.1)
    thread.join(120)
    assert not thread.is_alive()
    assert any(answered_meanwhile), "the bomb answered before any other request: it proves nothing"
    # Every node has descendants in the tree: the bomb selects all of running.
    assert len(outcome["data"].xpath("//e:interface", namespaces=NS)) == 80
