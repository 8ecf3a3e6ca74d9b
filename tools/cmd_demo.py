"""`qstrata demo`: the whole story on the embedded Madrid network, in one command.

It starts the devices, the three stratum controllers and the orchestrator on 127.0.0.1,
then acts as an operator would, over NETCONF and ETSI GS QKD 014 only: it commits a
key-service intent, watches it go active, fetches keys at both ends and compares them, cuts
a fibre under the intent's path and watches it degrade and recover on another path, puts an
eavesdropper on a span of the new path and watches the QBER alarm and the re-route. It ends
with a summary and shuts everything down; the exit code is 0 only if every step succeeded.
"""
from __future__ import annotations

import argparse
import asyncio
from typing import Callable

from lxml import etree

from models.ns import CONNECTIVITY, FORWARDING, INTENT as INTENT_NS, NT, NW
from netconf_core.ns import YANG_XML
from tools.demo_steps import STEP_TIMEOUT_S, StepFailed, Steps, as_sae, exchange_keys

INTENT = {"name": "quintin-distrito", "source": "sae-quintin", "destination": "sae-distrito", "min-rate": 20000}
EAVESDROPPER_FRACTION = "0.5"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the demo on the embedded network", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=STEP_TIMEOUT_S,
                        help=f"seconds each step may take (default {STEP_TIMEOUT_S:g})")
    parser.add_argument("--federation", action="store_true",
                        help="run the federation demo instead: four domains and the federation platform, a "
                             "cross-domain key service, a failure and its re-route, charging")
    parser.add_argument("--entanglement", action="store_true",
                        help="run the entanglement demo instead: an intent for Bell pairs at F >= 0.8 over two "
                             "repeaters, pairs at both ends, a measured batch, a fibre cut and its re-route, and "
                             "an infeasible fidelity refused with its reason")
    parser.add_argument("--console", action="store_true",
                        help="after the story, keep the network running with the operator's web console (its "
                             "address and logins printed) until Ctrl-C")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.federation:
        from tools.demo_federation import FederationDemo

        return asyncio.run(FederationDemo(args.timeout).run())
    if getattr(args, "entanglement", False):
        from tools.demo_entanglement import EntanglementDemo

        return asyncio.run(EntanglementDemo(args.timeout).run())
    demo = Demo(args.timeout)
    demo.console = getattr(args, "console", False)
    return asyncio.run(demo.run())


# --- an operator's view of a running stack, over NETCONF and ETSI 014 ----------------------

class Operator:
    """NETCONF sessions to the orchestrator, the forwarding and the connectivity controllers
    (subscribed to their notifications), and an HTTP client for the key managers' ETSI 014
    APIs: what an NMS and two applications would use."""

    def __init__(self, stack, timeout: float = STEP_TIMEOUT_S):
        self.stack = stack
        self.timeout = timeout
        self.sessions: dict[str, object] = {}
        self.events: dict[str, asyncio.Queue] = {}
        self._pumps: list[asyncio.Task] = []
        self.http = None

    async def __aenter__(self) -> Operator:
        import aiohttp

        for level in ("orchestrator", "forwarding", "connectivity"):
            self.events[level] = asyncio.Queue()
            await self.connect(level)
        self.http = aiohttp.ClientSession()
        return self

    async def connect(self, level: str) -> None:
        """(Re)open the session to a level and subscribe to its notifications."""
        from netconf_core import NetconfClient, trusted_host_keys

        row = next(r for r in self.stack.table() if r.level == level)
        user, password = row.read_write
        if level in self.sessions:
            self.sessions[level].close()
        nc = await NetconfClient.connect(row.host, row.port, user, password=password,
                                         known_hosts=trusted_host_keys(row.host_key))
        await nc.create_subscription()
        self.sessions[level] = nc
        self._pumps.append(asyncio.get_running_loop().create_task(self._pump(level, nc)))

    async def __aexit__(self, *exc: object) -> None:
        for task in self._pumps:
            task.cancel()
        for nc in self.sessions.values():
            nc.close()
        if self.http is not None:
            await self.http.close()

    async def _pump(self, level: str, nc) -> None:
        async for notification in nc.notifications():
            content = next((c for c in notification
                            if isinstance(c.tag, str) and etree.QName(c).localname != "eventTime"), None)
            if content is not None:
                self.events[level].put_nowait(content)

    async def wait_event(self, level: str, match: Callable[[etree._Element], bool], timeout: float | None = None,
                         on_event: Callable[[etree._Element], None] | None = None) -> etree._Element:
        """The next notification of `level` that matches; others are passed to `on_event`."""
        async with asyncio.timeout(timeout or self.timeout):
            while True:
                event = await self.events[level].get()
                if match(event):
                    return event
                if on_event is not None:
                    on_event(event)

    # -- intents --

    async def push_intent(self, name: str, source: str, destination: str, min_rate: int, **leaves: object) -> None:
        extra = "".join(f"<{k}>{v}</{k}>" for k, v in leaves.items())
        nc = self.sessions["orchestrator"]
        await nc.edit_config(
            f'<intents xmlns="{INTENT_NS}"><intent><name>{name}</name><endpoints><source-sae>{source}</source-sae>'
            f"<destination-sae>{destination}</destination-sae></endpoints><min-rate>{min_rate}</min-rate>{extra}"
            f"</intent></intents>", target="candidate")
        await nc.commit()

    async def intent(self, name: str) -> dict:
        from tools.cmd_intent import intent_states

        states = await intent_states(self.sessions["orchestrator"])
        if name not in states:
            raise StepFailed(f"the orchestrator has no intent {name}")
        return states[name]

    async def wait_state(self, name: str, wanted: set[str], show: Callable[[str], None] | None = None,
                         timeout: float | None = None) -> dict:
        """Wait for an intent-state-change of `name` into one of `wanted`, showing the others.
        Returns the intent as read afterwards, with the transition that matched as 'reached'."""
        def is_it(event: etree._Element) -> bool:
            if event.tag != INTENT_NS("intent-state-change") or INTENT_NS.text(event, "name", "") != name:
                return False
            if show is not None:
                show(f"{INTENT_NS.text(event, 'from', '') or '-'} -> {INTENT_NS.text(event, 'to', '')}: "
                     f"{INTENT_NS.text(event, 'reason', '')}")
            return INTENT_NS.text(event, "to", "") in wanted
        try:
            event = await self.wait_event("orchestrator", is_it, timeout)
        except TimeoutError:
            state = await self.intent(name)
            raise StepFailed(f"intent {name} is still {state.get('state')} after {timeout or self.timeout:g} s: "
                             f"{state.get('reason')}") from None
        from tools.cmd_intent import intent_states

        intent = (await intent_states(self.sessions["orchestrator"])).get(name, {"name": name})  # gone once deleted
        intent["reached"] = {"state": INTENT_NS.text(event, "to", ""), "reason": INTENT_NS.text(event, "reason", ""),
                             "generation": INTENT_NS.text(event, "generation", "")}
        return intent

    # -- the network --

    async def spans_of(self, link_ids: list[str]) -> list[str]:
        """The fibre spans under QKD links, from the forwarding and connectivity controllers."""
        from models.connectivity import read_fibre_network
        from models.forwarding import ForwardingView

        networks = ("subtree", f'<networks xmlns="{NW}"/>')
        fwd = ForwardingView.parse(await self.sessions["forwarding"].get(filter=networks))
        fibre = read_fibre_network(await self.sessions["connectivity"].get(filter=networks))
        spans: list[str] = []
        for link_id in link_ids:
            link = fwd.links.get(link_id)
            path = (link.optical_path or link.id) if link else link_id
            spans += [s for s in fibre.optical_paths.get(path, ()) if s not in spans]
        return spans

    async def span_action(self, span: str, action: str, **leaves: str) -> None:
        inner = "".join(f"<{k}>{v}</{k}>" for k, v in leaves.items())
        await self.sessions["connectivity"].dispatch(
            f'<action xmlns="{YANG_XML}"><networks xmlns="{NW}" xmlns:nt="{NT}"><network>'
            f"<network-id>fibre</network-id><nt:link><nt:link-id>{span}</nt:link-id>"
            f'<fibre-span xmlns="{CONNECTIVITY}"><{action}>{inner}</{action}></fibre-span></nt:link></network>'
            "</networks>"
            "</action>")

    def key_api(self, sae: str) -> str:
        """The ETSI 014 base URL of the key manager that serves `sae`."""
        km = next(s.km for s in self.stack.topology.saes if s.id == sae)
        return next(r.etsi014_url for r in self.stack.table() if r.name == km)

    def as_sae(self, sae: str) -> dict:
        """Request options of an ETSI 014 call made by SAE `sae`: its client certificate (or,
        in a stack's insecure header mode, the X-SAE-ID header)."""
        return as_sae(sae, self.stack.sae_ssl)

    async def fetch_keys(self, master: str, slave: str, number: int = 4, size: int = 256) -> tuple[list[str], bool]:
        return await exchange_keys(self.http, (self.key_api(master), master), (self.key_api(slave), slave),
                                   number, size, self.timeout, tls=self.stack.sae_ssl)


def path_of(intent: dict) -> tuple[list[str], list[str]]:
    """Nodes and links of the path in use."""
    path = next((p for p in intent.get("paths", []) if p["in-use"]), None)
    if path is None:
        raise StepFailed(f"intent {intent.get('name')} has no path in use")
    return path["nodes"], path["links"]


# --- the demo -------------------------------------------------------------------------------

class Demo(Steps):
    """The Madrid story (see the module's docstring)."""

    async def run(self) -> int:
        from devices.topology import default_topology
        from tools.stack import Stack

        stack = Stack(default_topology())
        try:
            if await self.step("Start the embedded Madrid network: devices, 3 controllers, orchestrator",
                               lambda: self._start(stack)):
                async with Operator(stack, self.timeout) as operator:
                    await self._story(operator)
                if getattr(self, "console", False):
                    await self._console(stack)
                else:
                    print("To look at the network in the operator's console, run `make demo CONSOLE=1` "
                          "(or `qstrata demo --console`).", flush=True)
        finally:
            print("shutting down ...", flush=True)
            await stack.stop()
        return self.summary()

    async def _console(self, stack) -> None:
        """The operator's console over the demo's network, until Ctrl-C."""
        from console.server import ConsoleServer
        from tools.console_stack import console_levels, console_users, start_line
        from tools.running import until_stopped

        rows = stack.table()
        users = console_users(rows)
        async with ConsoleServer(console_levels(rows), users, title=stack.topology.name) as console:
            writer, reader = rows[-1].read_write, rows[-1].read_only
            print(f"\n{start_line(console, users)}\n  {writer[0]} / {writer[1]}, {reader[0]} / {reader[1]}\n"
                  "The network stays up: cut spans and attach eavesdroppers from the page. Ctrl-C stops.", flush=True)
            await until_stopped()

    async def _start(self, stack) -> str:
        await stack.start()
        rows = stack.table()
        devices = sum(1 for r in rows if r.level not in ("connectivity", "forwarding", "service", "orchestrator"))
        orchestrator = next(r for r in rows if r.level == "orchestrator")
        user, password = orchestrator.read_write
        return (f"{devices} devices and 4 NETCONF levels on 127.0.0.1; orchestrator at port {orchestrator.port} "
                f"({user}/{password})")

    async def _story(self, op: Operator) -> None:
        name, source, destination = INTENT["name"], INTENT["source"], INTENT["destination"]
        state: dict = {}

        async def push() -> str:
            await op.push_intent(name, source, destination, INTENT["min-rate"])
            return f"intent {name}: {source} -> {destination}, at least {INTENT['min-rate']} bit/s (edit-config + commit)"

        async def active() -> str:
            state["intent"] = await op.wait_state(name, {"active", "failed"}, self.say)
            if state["intent"]["reached"]["state"] != "active":
                raise StepFailed(f"intent {name} failed: {state['intent']['reached']['reason']}")
            nodes, links = path_of(state["intent"])
            state["spans"] = await op.spans_of(links)
            return f"active over {' - '.join(nodes)} (spans {', '.join(state['spans'])})"

        async def keys() -> str:
            ids, same = await op.fetch_keys(source, destination)
            if not same:
                raise StepFailed("the two ends got different keys")
            return f"{len(ids)} keys of 256 bits fetched at both ends; they match (first ID {ids[0]})"

        async def cut() -> str:
            state["cut"] = state["spans"][0]
            await op.span_action(state["cut"], "cut")
            return f"span {state['cut']} cut (qi-connectivity cut action)"

        async def recover() -> str:
            await op.wait_state(name, {"degraded", "failed"}, self.say)
            state["intent"] = await op.wait_state(name, {"active", "failed"}, self.say)
            if state["intent"]["reached"]["state"] != "active":
                raise StepFailed(f"intent {name} failed: {state['intent']['reached']['reason']}")
            nodes, links = path_of(state["intent"])
            state["spans"] = await op.spans_of(links)
            if state["cut"] in state["spans"]:
                raise StepFailed(f"the new path still crosses the cut span {state['cut']}")
            return f"active again over {' - '.join(nodes)} (spans {', '.join(state['spans'])})"

        async def eavesdrop() -> str:
            nodes, _ = path_of(state["intent"])
            end_sites = {s.site for s in op.stack.topology.qkd_nodes if s.id in (nodes[0], nodes[-1])}
            ends = {s.id: {s.a.node, s.b.node} for s in op.stack.topology.spans}
            inner = [s for s in state["spans"] if not ends[s] & end_sites] or state["spans"]
            state["tapped"] = inner[0]
            await op.span_action(state["tapped"], "attach-eavesdropper", **{"intercept-fraction": EAVESDROPPER_FRACTION})
            alarm = await op.wait_event("forwarding", lambda e: e.tag == FORWARDING("qber-alarm")
                                        and FORWARDING.text(e, "raised", "") == "true")
            return (f"eavesdropper on span {state['tapped']}; QBER alarm on link "
                    f"{FORWARDING.text(alarm, 'link-id', '')}: "
                    f"{FORWARDING.text(alarm, 'qber', '')} % above {FORWARDING.text(alarm, 'threshold', '')} %")

        async def reroute() -> str:
            await op.wait_state(name, {"degraded", "failed"}, self.say)
            state["intent"] = await op.wait_state(name, {"active", "failed"}, self.say)
            if state["intent"]["reached"]["state"] != "active":
                raise StepFailed(f"intent {name} failed: {state['intent']['reached']['reason']}")
            nodes, links = path_of(state["intent"])
            spans = await op.spans_of(links)
            if state["tapped"] in spans:
                raise StepFailed(f"the new path still crosses the tapped span {state['tapped']}")
            return f"re-routed over {' - '.join(nodes)} (spans {', '.join(spans)})"

        for title, action in (
                ("Push a key-service intent to the orchestrator over NETCONF", push),
                ("The intent goes active", active),
                ("Fetch keys through ETSI GS QKD 014 at both ends", keys),
                ("Cut a fibre under the intent's path", cut),
                ("The intent degrades and recovers on another path", recover),
                ("Keys still match on the new path", keys),
                ("Put an eavesdropper on a span of the new path", eavesdrop),
                ("The intent re-routes around the eavesdropper", reroute),
                ("Keys still match after the re-route", keys)):
            if not await self.step(title, action):
                break
