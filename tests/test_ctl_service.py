"""The service controller.

Planning and key-manager edits on their own (no network), then the controller inside the
full stack (tools.stack) on the Madrid topology, over real NETCONF sessions and the key
managers' ETSI 014 HTTP API, each test on a stack of its own, around one session, s1:
installed on every key manager of its path with matching keys at both ends; re-planned on
the other route after a fibre cut; impossible sessions failing with the missing resource
named, and a key manager's refusal refusing the whole commit; moved off a link an
eavesdropper sits on. A test that builds on s1 gets it from a fixture (on route A, or moved
to route B by a cut and a repair).
"""
from __future__ import annotations

import asyncio
import pathlib

import aiohttp
import pytest
from lxml import etree

from conftest import LoopThread, read_sessions
from controller.key_paths import NoPath, Planner
from models.forwarding import ForwardingView, QkdLink, QkdNode
from models.key_manager import KmConfig, KmSession, KmView, km_edit
from models.service import SessionConfig as Request, session_filter
from devices.topology import default_topology
from netconf_core.client import NetconfClient
from netconf_core.datastore import empty_tree
from netconf_core.edit import apply_edit
from netconf_core.errors import BASE_NS, RPCError
from netconf_core.schema_cache import schema_for
from tools.stack import Stack

INSTANCES = pathlib.Path(__file__).parent / "instances"


# -- planning over a hand-made topology ---------------------------------------------------------
#
#      a ---ab--- b ---bd--- d
#       \                   /
#        ac---- c ----cd---
#                \
#                 ce--- e

def _uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _view(**changes: dict) -> ForwardingView:
    links = {}
    for n, (link_id, a, b) in enumerate([("ab", "a", "b"), ("bd", "b", "d"), ("ac", "a", "c"),
                                         ("cd", "c", "d"), ("ce", "c", "e")]):
        fields = {"status": "ACTIVE", "eskr": 10_000, "qber": 2.0} | changes.get(link_id, {})
        links[link_id] = QkdLink(link_id, (a, ""), (b, ""), _uuid(n), "PHYS", fields["status"], None, fields["eskr"],
                                 fields["qber"], None)
    nodes = {n: QkdNode(n, f"km-{n}", f"site-{n}") for n in "abcde"}
    return ForwardingView("", nodes, links)


def _planner(view: ForwardingView | None = None, alarms: dict[str, str] | None = None,
             down: set[str] = set()) -> Planner:
    return Planner(view or _view(), {f"km-{n}" for n in "abcde"} - down, alarms or {})


def _plan(planner: Planner, rate: int = 1000, source: str = "a", destination: str = "d", count: int = 1,
          **constraints) -> list[str]:
    request = Request(f"sae-{source}", f"sae-{destination}", rate, **constraints)
    return [str(p) for p in planner.plan(request, f"km-{source}", f"km-{destination}", count)]


def _refusal(planner: Planner, **kw) -> str:
    with pytest.raises(NoPath) as err:
        _plan(planner, **kw)
    return str(err.value)


def test_fewest_hops_with_headroom_after_other_sessions() -> None:
    planner = _planner(_view(ab={"eskr": 4000}))
    assert _plan(planner, rate=3000) in (["a - b - d"], ["a - c - d"])
    planner.hold("other", planner.plan(Request("x", "y", 2000), "km-a", "km-b")[0], 2000)
    assert _plan(planner, rate=3000) == ["a - c - d"]       # ab has 2000 b/s left
    path = planner.plan(Request("sae-a", "sae-b", 1500), "km-a", "km-b")[0]
    assert (str(path), path.headroom) == ("a - b", 2000)


def test_too_little_key_rate_names_the_bottleneck_link() -> None:
    planner = _planner(_view(cd={"eskr": 2500}, bd={"eskr": 1200}))
    reason = _refusal(planner, rate=3000)
    assert "3000 b/s requested" in reason
    assert "widest path a - c - d can spare 2500 b/s on link cd (eskr 2500 b/s, 0 b/s taken" in reason


@pytest.mark.parametrize("view, alarms, down, constraints, expected", [
    (_view(ab={"status": "OFF"}, cd={"status": "PASSIVE"}), {}, set(), {},
     "crosses a QKD link that is not ACTIVE: ab (OFF), cd (PASSIVE)"),
    (_view(ab={"status": "OFF"}), {"cd": "QBER 14% above the threshold 11%"}, set(), {},
     "crosses a QKD link with a raised QBER alarm: cd (QBER 14% above the threshold 11%)"),
    (None, {}, {"km-b", "km-c"}, {},
     "crosses a node whose key manager is unreachable: km-b, km-c"),
    (None, {}, set(), {"avoid_nodes": frozenset({"b"}), "avoid_links": frozenset({"ac"})},
     "crosses a node or link the request avoids: b, ac"),
    (_view(ab={"qber": 6.5}, cd={"qber": None}), {}, set(), {"qber_ceiling": 5.0},
     "crosses a QKD link above the QBER ceiling of 5.0%: ab (QBER 6.5%), cd (QBER unknown)"),
])
def test_refusal_names_the_links_or_nodes_that_are_missing(view, alarms, down, constraints, expected) -> None:
    reason = _refusal(_planner(view, alarms, down), **constraints)
    assert reason == f"every chain of QKD links between a and d {expected}"


def test_hop_limit_node_disjoint_paths_and_unknown_nodes() -> None:
    planner = _planner()
    assert _refusal(planner, source="b", destination="e", max_hops=2) == (
        "the shortest path between b and e with enough key rate has 3 hops, more than max-hops 2")
    assert _plan(planner, count=2) in (["a - b - d", "a - c - d"], ["a - c - d", "a - b - d"])
    assert _refusal(planner, count=3) == (
        "only 2 node-disjoint path(s) between a and d, 3 asked: "
        "no chain of PHYS QKD links joins a and d in the forwarding topology")
    with pytest.raises(NoPath, match="key manager km-z has no QKD node in the forwarding topology"):
        planner.plan(Request("x", "y", 1), "km-a", "km-z")


def test_paths_towards_one_key_manager_keep_forming_a_tree() -> None:
    """Routes are per destination: a path that would turn another session's route is skipped."""
    planner = _planner()
    first = planner.plan(Request("sae-a", "sae-d", 1000), "km-a", "km-d")[0]
    planner.hold("first", first, 1000)
    via = first.nodes[1]                       # b or c: km-a now relays keys for km-d through it
    other = "c" if via == "b" else "b"
    # From the other middle node, the direct link to d does not conflict.
    assert _plan(planner, source=other) == [f"{other} - d"]
    # From a, avoiding the first path's middle node, every path turns km-a's route for km-d.
    reason = _refusal(planner, avoid_nodes=frozenset({via}))
    assert reason == ("every path between a and d within the constraints would change a route that another "
                      f"session uses: key manager km-a relays keys for km-d via km-{via} "
                      f"(link {first.qkdl_ids[0]}) for session first")


def test_forwarding_view_reads_phys_links_of_the_qkd_network() -> None:
    data = etree.parse(str(INSTANCES / "qi-forwarding" / "valid-data.xml")).getroot()
    root = empty_tree()
    root.append(data)
    view = ForwardingView.parse(root).key_paths({})
    assert sorted(view.links) == ["alice-bob", "bob-carol"]       # the VIRT link is not planned over
    ab = view.links["alice-bob"]
    assert (ab.nodes(), ab.status, ab.eskr, ab.qber) == (("alice", "bob"), "ACTIVE", 770_000, 1.21)
    assert view.links["bob-carol"].status == "PASSIVE"


# -- key-manager edits, applied by the engine's edit-config under the real model ----------------

def _edit_config(schema, tree: etree._Element, edit: etree._Element) -> etree._Element:
    config = etree.Element(f"{{{BASE_NS}}}config")
    config.append(edit)
    return apply_edit(schema, tree, config)


def _km_tree(config: KmConfig) -> etree._Element:
    root = etree.Element(f"{{{KM}}}key-manager", nsmap={None: KM})
    etree.SubElement(root, f"{{{KM}}}km-id").text = "km-a"
    saes = etree.SubElement(root, f"{{{KM}}}saes")
    etree.SubElement(etree.SubElement(saes, f"{{{KM}}}sae"), f"{{{KM}}}sae-id").text = "sae-a"
    edit = km_edit(KmConfig(), config)
    tree = empty_tree()
    tree.append(root)
    return _edit_config(schema_for(("qi-key-manager",)), tree, edit) if edit is not None else tree


def test_km_edit_turns_what_a_key_manager_has_into_what_is_wanted() -> None:
    schema = schema_for(("qi-key-manager",))
    session = KmSession("sae-a", "sae-d", "km-d", 1000, 262_144, 256, None)
    have = KmConfig({_uuid(1): "km-b", _uuid(2): "km-c"},
                    {"km-d": ("km-b", _uuid(1)), "km-e": ("km-c", _uuid(2))}, {"s1": session})
    want = KmConfig({_uuid(1): "km-b", _uuid(2): "km-c"},
                    {"km-d": ("km-c", _uuid(2))},
                    {"s1": session, "s2": KmSession("sae-a", "sae-e", "km-e", 500, 262_144, 512, 60)})
    assert km_edit(have, have) is None
    tree = _km_tree(have)
    edit = km_edit(have, want)
    assert edit is not None and edit.find(f"{{{KM}}}key-pools") is None   # pools unchanged: not sent
    after = _edit_config(schema, tree, edit)
    schema.canonical(after, config_only=True)                             # valid under the model
    assert KmView.from_xml(after.find(f"{{{KM}}}key-manager")).config == want


# -- the controller in the full stack, on the Madrid network -----------------------------------
#
# Route A: qkd-quintin -q-c- qkd-concepcion -c-d- qkd-distrito              (2 hops, planned first)
# Route B: qkd-quintin -q-a- qkd-almagro -a-n- qkd-norte -n-d- qkd-distrito  (3 hops)
# Each link is asked of the forwarding controller, which gets its optical path (through the
# switches at Concepcion and Norte) from the connectivity controller.

LINKS = {"q-c": (("qkd-quintin", 1), ("qkd-concepcion", 1)), "c-d": (("qkd-concepcion", 2), ("qkd-distrito", 2)),
         "q-a": (("qkd-quintin", 2), ("qkd-almagro", 2)), "a-n": (("qkd-almagro", 3), ("qkd-norte", 1)),
         "n-d": (("qkd-norte", 2), ("qkd-distrito", 1))}
QKDL = {name: _uuid(100 + i) for i, name in enumerate(LINKS)}
ROUTE_A = "qkd-quintin - qkd-concepcion - qkd-distrito"
KM = "urn:qstrata:yang:qi-key-manager"
SVC = "urn:qstrata:yang:qi-service"
ROUTE_B = "qkd-quintin - qkd-almagro - qkd-norte - qkd-distrito"
NW = "urn:ietf:params:xml:ns:yang:ietf-network"
NT = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
FWD = "urn:qstrata:yang:qi-forwarding"
ETSI_TYPES = "urn:etsi:qkd:yang:etsi-qkd-node-types"
PLANT = "urn:qstrata:yang:qi-fibre-plant"
WAIT_S = 20.0


def _session(name: str, source: str, destination: str, rate: int) -> str:
    return (f'<sessions xmlns="{SVC}"><session><name>{name}</name><source-sae>{source}</source-sae>'
            f'<destination-sae>{destination}</destination-sae><rate>{rate}</rate></session></sessions>')


class Running:
    """The stack on a loop in a background thread; the tests are its NETCONF and HTTP clients."""

    def __init__(self) -> None:
        self.loop = LoopThread()
        self.stack = Stack(default_topology())
        try:
            self.loop.run(self.stack.start(), timeout=120)
        except BaseException:
            self.loop.close()
            raise
        self.levels = {row.name: row for row in self.stack.table()}

    def close(self) -> None:
        self.loop.run(self.stack.stop(), timeout=60)
        self.loop.close()

    def run(self, coro):
        return self.loop.run(coro, timeout=120)

    async def client(self, name: str) -> NetconfClient:
        row = self.levels[name]
        user, password = row.read_write
        return await NetconfClient.connect(row.host, row.port, user, password=password)

    async def km(self, km_id: str) -> KmConfig:
        async with await self.client(km_id) as nc:
            data = await nc.get_config(filter=("subtree", f'<key-manager xmlns="{KM}"/>'))
        return KmView.from_xml(data.find(f"{{{KM}}}key-manager")).config

    async def sessions(self, *names: str) -> dict[str, dict[str, str]]:
        """Every session, or those named (read with a filter of each)."""
        async with await self.client("service") as nc:
            if not names:
                return await read_sessions(nc)
            read = {}
            for name in names:
                read.update(await read_sessions(nc, session_filter(name)))
            return read

    async def plant(self, rpc: str, span: str, extra: str = "") -> None:
        async with await self.client("fibre-plant") as nc:
            await nc.dispatch(f'<{rpc} xmlns="{PLANT}"><span-id>{span}</span-id>{extra}</{rpc}>')

    async def links_active(self) -> bool:
        """Every QKD link of the two routes is ACTIVE at the forwarding controller."""
        async with await self.client("forwarding") as nc:
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"/>'))
        status = {l.findtext(f"{{{NT}}}link-id"): l.findtext(f"{{{FWD}}}qkd-link/{{{FWD}}}status")
                  for l in data.iter(f"{{{NT}}}link")}
        return all((status.get(name) or "").endswith(":ACTIVE") for name in LINKS)

    async def matching_keys(self, source: str, destination: str, number: int = 2) -> list[dict]:
        """Keys the source SAE gets from its key manager (ETSI 014 enc_keys), fetched by ID by the
        destination SAE from its own (dec_keys): asserts they are the same keys."""
        master_url = self.levels[f"km-{source}"].etsi014_url
        slave_url = self.levels[f"km-{destination}"].etsi014_url
        async with aiohttp.ClientSession() as http:
            for _ in range(50):   # the pools may still be filling
                async with http.get(f"{master_url}/api/v1/keys/sae-{destination}/enc_keys",
                                    params={"number": str(number)}, ssl=self.stack.sae_ssl(f"sae-{source}")) as r:
                    body = await r.json()
                    if r.status != 503:
                        break
                await asyncio.sleep(0.1)
            assert r.status == 200, body
            ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in body["keys"]]}
            async with http.post(f"{slave_url}/api/v1/keys/sae-{source}/dec_keys", json=ids,
                                 ssl=self.stack.sae_ssl(f"sae-{destination}")) as r:
                assert r.status == 200, await r.text()
                fetched = await r.json()
        assert fetched["keys"] == body["keys"] and len(body["keys"]) == number
        return body["keys"]


async def _until(condition, timeout: float = WAIT_S) -> None:
    async def poll() -> None:
        while not await condition():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(poll(), timeout)


async def _events(nc: NetconfClient, session: str, until_status: str) -> list[tuple[str, str]]:
    """(status, reason) of the session's session-status-change notifications, up to one with `until_status`."""
    out = []
    async for message in nc.notifications():
        change = message.find(f"{{{SVC}}}session-status-change")
        if change is not None and change.findtext(f"{{{SVC}}}name") == session:
            out.append((change.findtext(f"{{{SVC}}}status"), change.findtext(f"{{{SVC}}}reason")))
            if out[-1][0] == until_status:
                return out
    return out


@pytest.fixture
def running():
    """A stack of its own for each test, with the QKD links of both routes ACTIVE."""
    stack = Running()

    async def add_links() -> None:
        body = "".join(
            f'<link xmlns="{NT}"><link-id>{name}</link-id><source><source-node>{a[0]}</source-node>'
            f'<source-tp>{a[1]}</source-tp></source><destination><dest-node>{b[0]}</dest-node><dest-tp>{b[1]}'
            f'</dest-tp></destination><qkd-link xmlns="{FWD}"><qkdl-id>{QKDL[name]}</qkdl-id>'
            f'<link-type>t:PHYS</link-type></qkd-link></link>' for name, (a, b) in LINKS.items())
        async with await stack.client("forwarding") as nc:
            await nc.edit_config(f'<networks xmlns="{NW}" xmlns:t="{ETSI_TYPES}"><network><network-id>qkd'
                                 f'</network-id>{body}</network></networks>', target="candidate")
            await nc.commit()
        await _until(stack.links_active)

    try:
        stack.run(add_links())
        yield stack
    finally:
        stack.close()


async def _s1_is(running: Running, path: str) -> bool:
    s1 = (await running.sessions()).get("s1", {})
    return (s1.get("status"), s1.get("path")) == ("active", path)


@pytest.fixture
def s1_on_route_a(running: Running) -> None:
    """Session s1 (sae-quintin to sae-distrito) active on route A, the shorter one."""
    async def install() -> None:
        async with await running.client("service") as nc:
            await nc.edit_config(_session("s1", "sae-quintin", "sae-distrito", 1000), target="candidate")
            await nc.commit()
        await _until(lambda: _s1_is(running, ROUTE_A))
    running.run(install())


@pytest.fixture
def s1_on_route_b(running: Running, s1_on_route_a: None) -> None:
    """s1 moved to route B by a cut of concepcion-distrito, then the span repaired: s1 stays on B."""
    async def move() -> None:
        await running.plant("cut-span", "concepcion-distrito")
        try:
            await _until(lambda: _s1_is(running, ROUTE_B))
        finally:
            await running.plant("repair-span", "concepcion-distrito")
        await _until(running.links_active)
    running.run(move())


def test_session_is_installed_on_every_key_manager_of_its_path_and_keys_match(running: Running) -> None:
    async def scenario():
        async with await running.client("service") as nc:
            await nc.edit_config(_session("s1", "sae-quintin", "sae-distrito", 1000), target="candidate")
            await nc.commit()
            state = (await read_sessions(nc))["s1"]
        kms = {km: await running.km(f"km-{km}") for km in ("quintin", "concepcion", "distrito", "almagro")}
        keys = await running.matching_keys("quintin", "distrito")
        return state, kms, keys, await running.sessions(), await running.sessions("s1")

    state, kms, keys, after, alone = running.run(scenario())
    assert (state["status"], state["path"]) == ("active", ROUTE_A)
    assert state["reason"] == f"installed over {ROUTE_A} on 3 key managers"
    qc, cd = QKDL["q-c"], QKDL["c-d"]
    assert kms["quintin"].routes == {"km-distrito": ("km-concepcion", qc)}
    assert kms["concepcion"].routes == {"km-distrito": ("km-distrito", cd), "km-quintin": ("km-quintin", qc)}
    assert kms["distrito"].routes == {"km-quintin": ("km-concepcion", cd)}
    assert kms["concepcion"].pools[qc] == "km-quintin" and kms["concepcion"].pools[cd] == "km-distrito"
    assert kms["almagro"].routes == {} and kms["almagro"].sessions == {}
    assert kms["concepcion"].sessions == {}            # a relay node holds routes only
    assert kms["quintin"].sessions["s1"] == KmSession("sae-quintin", "sae-distrito", "km-distrito", 1000,
                                                      262_144, 256, None)
    assert kms["distrito"].sessions["s1"].peer_km == "km-quintin"
    assert len(keys) == 2 and after["s1"]["delivered-keys"] == "2"
    assert alone == {"s1": after["s1"]}  # read alone, its counters come from its key manager all the same


@pytest.mark.usefixtures("s1_on_route_a")
def test_fibre_cut_on_the_path_replans_the_session_on_the_other_route(running: Running) -> None:
    async def scenario():
        async with await running.client("service") as nc:
            await nc.create_subscription()
            await running.plant("cut-span", "concepcion-distrito")
            try:
                events = await asyncio.wait_for(_events(nc, "s1", "active"), WAIT_S)
                state = (await read_sessions(nc))["s1"]
                kms = {km: await running.km(f"km-{km}") for km in ("quintin", "concepcion", "almagro", "norte")}
                keys = await running.matching_keys("quintin", "distrito")
            finally:
                await running.plant("repair-span", "concepcion-distrito")
        return events, state, kms, keys

    events, state, kms, keys = running.run(scenario())
    (status, reason), *_, (final, replanned) = events
    assert status == "degraded" and reason.startswith("link c-d is ")
    assert final == "active" and replanned.startswith(f"re-planned over {ROUTE_B} on 4 key managers: link c-d is ")
    assert (state["status"], state["path"]) == ("active", ROUTE_B)
    assert kms["quintin"].routes == {"km-distrito": ("km-almagro", QKDL["q-a"])}
    assert kms["almagro"].routes == {"km-distrito": ("km-norte", QKDL["a-n"]), "km-quintin": ("km-quintin", QKDL["q-a"])}
    assert kms["norte"].routes["km-distrito"] == ("km-distrito", QKDL["n-d"])
    assert kms["concepcion"].routes == {}
    assert len(keys) == 2


def test_impossible_sessions_fail_naming_what_is_missing_and_a_refusal_changes_nothing(running: Running) -> None:
    async def scenario():
        async with await running.client("service") as nc:
            await nc.edit_config(_session("to-campus", "sae-almagro", "sae-montegancedo", 1000)
                                 + _session("too-fast", "sae-almagro", "sae-distrito", 10**12), target="candidate")
            await nc.commit()
            states = await read_sessions(nc)
            with pytest.raises(RPCError) as planned:
                await nc.dispatch(f'<plan-path xmlns="{SVC}"><source-sae>sae-almagro</source-sae>'
                                  f'<destination-sae>sae-distrito</destination-sae><rate>{10**12}</rate></plan-path>')
            almagro = await running.km("km-almagro")
            # A key manager that refuses its part (another operator holds its candidate lock)
            # refuses the whole change: no key manager keeps anything of it.
            async with await running.client("km-norte") as holder:
                await holder.lock("candidate")
                before = {km: await running.km(km) for km in ("km-almagro", "km-norte", "km-distrito")}
                await nc.edit_config(_session("refused", "sae-distrito", "sae-almagro", 1000), target="candidate")
                with pytest.raises(RPCError) as refused:
                    await nc.commit()
                after = {km: await running.km(km) for km in before}
                await nc.discard_changes()
        return states, planned.value, almagro, refused.value, before, after

    states, planned, almagro, refused, before, after = running.run(scenario())
    assert states["to-campus"]["status"] == "failed"
    assert states["to-campus"]["reason"] == ("no chain of PHYS QKD links joins qkd-almagro and qkd-montegancedo "
                                             "in the forwarding topology")
    assert states["too-fast"]["status"] == "failed"
    too_fast = f"not enough effective key rate between qkd-almagro and qkd-distrito: {10**12} b/s requested, the widest path "
    assert states["too-fast"]["reason"].startswith(too_fast)
    # plan-path says the same, with the links' eskr as they are now (they move every second).
    assert planned.tag == "operation-failed" and planned.message.startswith(too_fast)
    assert "to-campus" not in almagro.sessions and "too-fast" not in almagro.sessions
    assert refused.message.startswith("device km-norte refused the change")
    assert after == before and "refused" not in after["km-almagro"].sessions
    assert "refused" not in running.run(running.sessions())


@pytest.mark.usefixtures("s1_on_route_b")
def test_eavesdropper_on_the_path_moves_the_session_off_the_alarmed_link(running: Running) -> None:
    async def scenario():
        await _until(running.links_active)            # c-d is back since the repair
        async with await running.client("service") as nc:
            before = (await read_sessions(nc))["s1"]["path"]
            await nc.create_subscription()
            await running.plant("attach-eavesdropper", "almagro-norte", "<fraction>1</fraction>")
            try:
                events = await asyncio.wait_for(_events(nc, "s1", "active"), WAIT_S)
                state = (await read_sessions(nc))["s1"]
                keys = await running.matching_keys("quintin", "distrito")
            finally:
                await running.plant("remove-eavesdropper", "almagro-norte")
        return before, events, state, keys

    before, events, state, keys = running.run(scenario())
    assert before == ROUTE_B
    (status, reason), *_, (final, replanned) = events
    # The node may report the link down (PASSIVE) before or after the QBER alarm reaches the controller.
    assert status == "degraded" and reason.startswith("link a-n ") and ("QBER" in reason or "PASSIVE" in reason)
    assert final == "active" and replanned.startswith(f"re-planned over {ROUTE_A} on 3 key managers: link a-n ")
    assert (state["status"], state["path"]) == ("active", ROUTE_A)
    assert len(keys) == 2


def test_a_peer_of_another_domain_on_a_key_manager_is_left_as_configured_and_is_no_drift(
        running: Running, s1_on_route_a: None, caplog) -> None:
    """A federation or peering agent adds the key manager across an inter-domain link as a peer
    of a border key manager: the service controller leaves it and does not call it drift; a
    session removed behind its back still is drift, and is repaired."""
    import logging

    km = "km-quintin"
    foreign = (f'<key-manager xmlns="{KM}"><peers><peer><km-id>km-elsewhere</km-id>'
               "<url>https://127.0.0.1:9</url></peer></peers></key-manager>")

    async def scenario() -> None:
        async with await running.client(km) as nc:
            await nc.edit_config(foreign)
        with caplog.at_level(logging.WARNING, logger="controller.service"):
            await running.stack.service.resync()
            await running.stack.service.resync()
        assert not [r for r in caplog.records if "differs from what was written" in r.getMessage()], caplog.text
        config = await running.km(km)
        assert config.peers.get("km-elsewhere") == "https://127.0.0.1:9" and config.sessions, config
        assert await _s1_is(running, ROUTE_A)
        session = next(iter(config.sessions))
        async with await running.client(km) as nc:
            await nc.edit_config(f'<key-manager xmlns="{KM}" xmlns:nc="{BASE_NS}"><sessions><session '
                                 f'nc:operation="delete"><session-id>{session}</session-id></session></sessions>'
                                 "</key-manager>")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="controller.service"):
            await running.stack.service.resync()
        assert f"key manager {km} differs from what was written; repairing" in caplog.text, caplog.text
        assert session in (await running.km(km)).sessions
        assert (await running.km(km)).peers.get("km-elsewhere") == "https://127.0.0.1:9"
    running.run(scenario())
