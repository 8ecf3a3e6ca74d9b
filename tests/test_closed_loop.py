"""The closed loop (issue 12): alarms as state (RFC 8632 alarm lists), requests that state the
whole desired state, and convergence without flapping. Each scenario reproduces a defect on
the full stack (devices, the three controllers, the orchestrator, each a NETCONF server on
127.0.0.1), acting as an operator would: NETCONF to every level, ETSI GS QKD 014 for keys."""
from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import sys

from lxml import etree

from devices.topology import SaeSpec, default_topology
from netconf_core.client import NetconfClient
from orchestrator.planner import candidate_links
from models.alarms import read_alarms
from models.forwarding import ForwardingView, links_config, links_delete
from models.ns import ALARMS as AL_NS, NW as NW_NS, SERVICE as SVC_NS
from orchestrator.store import IntentStore
from models.connectivity import read_fibre_network
from tools.cmd_demo import Operator, path_of
from tools.cmd_up import write_state
from tools.stack import Stack
from conftest import read_sessions, stack_scenario, until
from test_processes import child_env

FWD_NS = "urn:qstrata:yang:qi-forwarding"
INT_NS = "urn:qstrata:yang:qi-intent"
WAIT_S = 30.0
NETWORKS = ("subtree", f"<networks xmlns='{NW_NS}'/>")
ALARMS = ("subtree", f"<alarms xmlns='{AL_NS}'/>")
QUIET_WINDOW_S = 10.0
CONFIG_CHANGE_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"


def scenario(tmp_path, body, topology=None) -> None:
    stack_scenario(tmp_path, body, wait_s=WAIT_S, bound_s=180, topology=topology)


async def active(op: Operator, name: str, source: str, destination: str, rate: int = 20000) -> dict:
    await op.push_intent(name, source, destination, rate)
    intent = await op.wait_state(name, {"active", "failed"})
    assert intent["reached"]["state"] == "active", intent["reached"]["reason"]
    return intent


async def forwarding_links(op: Operator) -> ForwardingView:
    return ForwardingView.parse(await op.sessions["forwarding"].get(filter=NETWORKS))


async def transitions_during(op: Operator, name: str, seconds: float) -> list[str]:
    """The states `name` entered during the next `seconds`, from its intent-state-change notifications."""
    loop = asyncio.get_running_loop()
    deadline, states = loop.time() + seconds, []
    while (left := deadline - loop.time()) > 0:
        try:
            async with asyncio.timeout(left):
                event = await op.events["orchestrator"].get()
        except TimeoutError:
            break
        if event.tag == f"{{{INT_NS}}}intent-state-change" and event.findtext(f"{{{INT_NS}}}name") == name:
            states.append(event.findtext(f"{{{INT_NS}}}to"))
    return states


def raised_on(alarms, link_id: str) -> list:
    return [a for a in alarms if a.link_id == link_id and not a.cleared]


# --- a cleared eavesdropper leaves no alarm behind, and nothing flaps ------------------------------

def test_alarm_of_a_deleted_link_is_cleared_and_a_later_cut_converges(tmp_path):
    async def body(stack, op):
        intent = await active(op, "qa", "sae-quintin", "sae-almagro", 50000)
        _, [direct] = path_of(intent)
        [span] = await op.spans_of([direct])
        assert span == "quintin-almagro"
        await op.span_action(span, "attach-eavesdropper", **{"intercept-fraction": "0.3"})
        moved = await op.wait_state("qa", {"active", "failed"})
        assert moved["reached"]["state"] == "active" and direct not in path_of(moved)[1]
        # the tapped link is no longer used: the orchestrator deletes it, and its alarm is cleared
        await until(lambda: _gone(op, direct), f"deletion of link {direct}")
        cleared = await op.wait_event("forwarding", lambda e: e.tag == f"{{{AL_NS}}}alarm-notification"
                                      and e.findtext(f"{{{AL_NS}}}perceived-severity") == "cleared"
                                      and "qber-above-threshold" in e.findtext(f"{{{AL_NS}}}alarm-type-id")
                                      and direct in e.findtext(f"{{{AL_NS}}}resource"))
        assert f"link {direct} was deleted" == cleared.findtext(f"{{{AL_NS}}}alarm-text")
        alarms = read_alarms(await op.sessions["forwarding"].get(filter=ALARMS))
        assert not raised_on(alarms, direct)
        assert {a.type_id for a in alarms if a.link_id == direct} == {"qber-above-threshold", "link-down"}
        await op.span_action(span, "remove-eavesdropper")
        await op.span_action("quintin-concepcion", "cut")
        states = await transitions_during(op, "qa", QUIET_WINDOW_S)
        assert states and states[-1] == "active" and len(states) < 10, states
        intent = await op.intent("qa")
        assert path_of(intent)[1] == [direct]  # the link was made again, and is trusted again
        assert (await op.fetch_keys("sae-quintin", "sae-almagro"))[1]
    scenario(tmp_path, body)


async def _gone(op: Operator, link_id: str) -> bool:
    return link_id not in (await forwarding_links(op)).links


# --- the session request replaces what the service stratum held --------------------------------

def test_two_path_moves_then_a_working_path_the_intent_is_active_again(tmp_path):
    async def body(stack, op):
        intent = await active(op, "qd", "sae-quintin", "sae-distrito")
        first_nodes, _ = path_of(intent)
        assert first_nodes == ["qkd-quintin", "qkd-concepcion", "qkd-distrito"]
        await op.span_action("quintin-concepcion", "cut")
        moved = await op.wait_state("qd", {"active", "failed"})
        assert moved["reached"]["state"] == "active", moved["reached"]["reason"]
        assert "quintin-concepcion" not in await op.spans_of(path_of(moved)[1])
        await op.span_action("quintin-concepcion", "repair")
        away = set(await op.spans_of(path_of(moved)[1]))
        await op.span_action("quintin-almagro", "cut")
        assert "quintin-almagro" in away
        back = await op.wait_state("qd", {"active", "failed"})
        assert back["reached"]["state"] == "active", back["reached"]["reason"]
        nodes, links = path_of(back)
        assert nodes == first_nodes
        assert (await op.fetch_keys("sae-quintin", "sae-distrito"))[1]
        # what the service stratum holds is what the orchestrator asks now: no link of the
        # path in use is avoided, whatever was avoided on the way
        service = next(row for row in stack.table() if row.level == "service")
        async with await NetconfClient.connect(service.host, service.port, *service.read_write) as nc:
            data = await nc.get_config(filter=("subtree", f"<sessions xmlns='{SVC_NS}'/>"))
        avoided = {e.text for e in data.iter(f"{{{SVC_NS}}}avoid-links")}
        assert not avoided & set(links), avoided
        # and once it holds it, the orchestrator's passes write nothing more
        async with await NetconfClient.connect(service.host, service.port, *service.read_write) as nc:
            await nc.create_subscription()
            passes = stack.orchestrator.passes
            await until(lambda: _passes_since(stack, passes, 3), "three reconcile passes", period=0.05)
            changes = []
            try:
                async with asyncio.timeout(0.5):
                    async for notification in nc.notifications():
                        changes.append(notification)
            except TimeoutError:
                pass
        assert not [c for c in changes if c.find(f"{{{CONFIG_CHANGE_NS}}}netconf-config-change") is not None]
    scenario(tmp_path, body)


async def _passes_since(stack: Stack, passes: int, count: int) -> bool:
    stack.orchestrator.wake()
    return stack.orchestrator.passes >= passes + count


# --- alarms as state: the forwarding controller's alarm list, and qstrata status -------------------

def test_alarm_list_raises_clears_on_deletion_and_status_shows_it(tmp_path):
    async def body(stack, op):
        fwd = await forwarding_links(op)
        fibre = read_fibre_network(await op.sessions["connectivity"].get(filter=NETWORKS))
        [link] = [c for c in candidate_links(fwd, fibre) if c.spans == ("quintin-almagro",)]
        nc = op.sessions["forwarding"]
        await nc.edit_config(links_config(fwd.network_id, [link]), target="running")  # an operator's own link
        await until(lambda: _is_active(op, link.link_id), f"link {link.link_id} ACTIVE")
        await op.span_action("quintin-almagro", "attach-eavesdropper", **{"intercept-fraction": "0.5"})

        async def raised():
            return raised_on(read_alarms(await nc.get(filter=ALARMS)), link.link_id)
        kinds = {a.type_id for a in await until(raised, "a QBER alarm")}
        assert "qber-above-threshold" in kinds
        data = await nc.get(filter=ALARMS)
        text = "".join(etree.tostring(child, encoding="unicode") for child in data)
        schema = stack.forwarding.server.schema  # the alarm list is valid ietf-alarms data, as libyang judges it
        schema.ctx.parse_data_mem(text, "xml", strict=True, validate_present=True).free()
        entry = data.find(f".//{{{AL_NS}}}alarm")
        for leaf in ("resource", "alarm-type-id", "alarm-type-qualifier", "is-cleared", "last-raised",
                     "last-changed", "perceived-severity", "alarm-text", "status-change"):
            assert entry.find(f"{{{AL_NS}}}{leaf}") is not None, leaf

        stack_file = tmp_path / "qstrata-stack.json"
        write_state(stack_file, "madrid", stack.table())
        status = await qstrata_status(stack_file)
        alarms_section = status.split("\n\n")[2].splitlines()
        assert alarms_section[0] == "ALARMS"
        assert any(line.startswith(f"QBER alarm (major) on link {link.link_id}: QBER ") for line in alarms_section)
        assert any(line.startswith("eavesdropper alarm (critical) on span quintin-almagro: span quintin-almagro is "
                                   "tapped") for line in alarms_section)  # the connectivity controller's list

        await nc.edit_config(links_delete(fwd.network_id, [link.link_id]), target="running")  # deleted while raised
        qber = await op.wait_event("forwarding", lambda e: e.tag == f"{{{FWD_NS}}}qber-alarm"
                                   and e.findtext(f"{{{FWD_NS}}}raised") == "false")
        assert qber.findtext(f"{{{FWD_NS}}}link-id") == link.link_id
        alarms = [a for a in read_alarms(await nc.get(filter=ALARMS)) if a.link_id == link.link_id]
        assert alarms and all(a.cleared and a.text == f"link {link.link_id} was deleted" for a in alarms)
        assert all(a.severity == "major" for a in alarms)  # the severity it had; 'cleared' is in status-change
        status = await qstrata_status(stack_file)
        assert link.link_id not in status.split("\n\n")[2]
        await op.span_action("quintin-almagro", "remove-eavesdropper")

        async def span_alarms_cleared():  # the connectivity controller's list
            alarms = [a for a in read_alarms(await op.sessions["connectivity"].get(filter=ALARMS))
                      if a.link_id == "quintin-almagro"]
            return alarms if alarms and all(a.cleared for a in alarms) else None
        [tapped] = await until(span_alarms_cleared, "the span alarm cleared")
        assert (tapped.type_id, tapped.text) == ("span-tapped", "span quintin-almagro is no longer tapped")
    scenario(tmp_path, body)


async def _is_active(op: Operator, link_id: str) -> bool:
    link = (await forwarding_links(op)).links.get(link_id)
    return link is not None and link.status == "ACTIVE"


async def qstrata_status(stack_file: pathlib.Path) -> str:
    """`qstrata status` as typed at a shell, in a child process, against the stack file."""
    env = child_env()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.cli", "status", "--stack-file", str(stack_file), cwd=stack_file.parent,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


# --- a failure that comes back every time backs off, and is counted ----------------------------

def test_a_path_that_breaks_whenever_it_is_made_backs_off_and_is_counted(tmp_path):
    async def body(stack, op):
        # QBER always above the threshold of qkd-almagro: the direct link raises its alarm as
        # soon as it is up, the intent fails and the link goes; with the link gone the path is
        # plannable again, and so on for ever.
        almagro = next(row for row in stack.table() if row.name == "qkd-almagro")
        async with await NetconfClient.connect(almagro.host, almagro.port, *almagro.read_write) as nc:
            await nc.edit_config("<qkd_node xmlns='urn:etsi:qkd:yang:etsi-qkd-node'><qber-alarm-threshold "
                                 "xmlns='urn:qstrata:yang:qi-qkd-node-ext'>0.010</qber-alarm-threshold></qkd_node>",
                                 target="running")
        # Montegancedo's one span ends at Almagro: no other way (through a trusted node, or an
        # optical bypass of one) joins them.
        await op.push_intent("qa", "sae-almagro", "sae-montegancedo", 1000)
        states = await transitions_during(op, "qa", 15.0)
        assert states.count("failed") >= 2, states  # it did fail again and again
        assert len(states) < 30, states             # ... but not at the pace of the loop
        history = (await op.intent("qa"))["history"]
        assert len(history) < 10 and max(int(t.get("count", 1)) for t in history) >= 2, history
    scenario(tmp_path, body)


# --- a restart keeps an intent on its path -----------------------------------------------------

def test_a_restarted_network_keeps_the_intent_on_its_path(tmp_path):
    async def run() -> None:
        first = Stack(default_topology(), state_dir=tmp_path / "stack")
        await first.start()
        try:
            async with Operator(first, WAIT_S) as op:
                before = path_of(await active(op, "qd", "sae-quintin", "sae-distrito"))
        finally:
            await first.stop()
        again = Stack(default_topology(), state_dir=tmp_path / "stack")  # every level, from its saved state
        await again.start()
        try:
            async with Operator(again, WAIT_S) as op:
                await until(lambda: _session_active(again, "qd"), "session qd active again")
                await transitions_during(op, "qd", 5.0)  # time for the orchestrator to (not) move it
                intent = await op.intent("qd")
                assert intent["state"] == "active", intent["reason"]
                assert path_of(intent) == before
                after_restart = [t for t in intent["history"] if int(t["sequence"]) > 4]
                assert not any("new QKD links" in t["reason"] or t["to"] == "failed" for t in after_restart), \
                    [(t["to"], t["reason"]) for t in after_restart]  # its links were kept, not deleted and made again
                assert (await op.fetch_keys("sae-quintin", "sae-distrito"))[1]
        finally:
            await again.stop()
    asyncio.run(asyncio.wait_for(run(), 180))


async def _session_active(stack: Stack, name: str) -> bool:
    service = next(row for row in stack.table() if row.level == "service")
    async with await NetconfClient.connect(service.host, service.port, *service.read_write) as nc:
        return (await read_sessions(nc)).get(name, {}).get("status") == "active"


# --- two SAEs of one key manager ----------------------------------------------------------------

def test_two_saes_of_one_key_manager_get_matching_keys_without_a_qkd_link(tmp_path):
    madrid = default_topology()
    topology = dataclasses.replace(madrid, saes=madrid.saes + (SaeSpec("sae-quintin-lab", "km-quintin"),))

    async def body(stack, op):
        intent = await active(op, "lab", "sae-quintin", "sae-quintin-lab", 10000)
        assert path_of(intent) == (["qkd-quintin"], [])
        ids, same = await op.fetch_keys("sae-quintin", "sae-quintin-lab")
        assert same and len(set(ids)) == 4
        assert (await forwarding_links(op)).links == {}  # no QKD link was asked for
    scenario(tmp_path, body, topology)


# --- a repeated failure is one history entry with a count ------------------------------------------

def test_a_repeated_transition_is_counted_not_appended(tmp_path):
    store = IntentStore(tmp_path)
    store.put_config("i", "<intent/>", "planned", "created by the operator")
    for state, reason in [("compiling", "decomposing"), ("installing", "path a - b"), ("failed", "link a-b alarm")]:
        store.transition("i", state, reason)
    for _ in range(3):  # the same loop again and again
        for state, reason in [("compiling", "a path is available again"), ("installing", "path a - b"),
                              ("failed", "link a-b alarm")]:
            store.transition("i", state, reason)
    history = [(t.sequence, t.from_state, t.to_state, t.count) for t in store.history("i")]
    assert history == [(1, None, "planned", 1), (2, "planned", "compiling", 1), (3, "compiling", "installing", 4),
                       (4, "installing", "failed", 4), (5, "failed", "compiling", 3)]
    assert store.get("i").state == "failed"
    store.transition("i", "compiling", "a path is available again")
    store.transition("i", "installing", "path a - b")
    store.transition("i", "active", "keys flow")
    store.transition("i", "degraded", "link a-b alarm")
    store.transition("i", "repairing", "re-planning")
    store.transition("i", "failed", "link a-b alarm")
    store.transition("i", "compiling", "a path is available again")  # after settling: a new entry
    assert [(t.to_state, t.count) for t in store.history("i")][-4:] == [
        ("degraded", 1), ("repairing", 1), ("failed", 1), ("compiling", 1)]
    store.close()
    reopened = IntentStore(tmp_path)  # the count is stored
    assert reopened.history("i")[3].count == 4
    reopened.close()


def test_a_store_without_counts_is_upgraded(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "intents.sqlite3")
    db.executescript("CREATE TABLE transition (intent TEXT NOT NULL, sequence INTEGER NOT NULL, from_state TEXT, "
                     "to_state TEXT NOT NULL, time TEXT NOT NULL, reason TEXT NOT NULL, "
                     "PRIMARY KEY (intent, sequence));"
                     "INSERT INTO transition VALUES ('old', 1, NULL, 'planned', '2026-01-01T00:00:00.000Z', 'x');")
    db.close()
    store = IntentStore(tmp_path)
    assert [(t.to_state, t.count) for t in store.history("old")] == [("planned", 1)]
    store.close()
