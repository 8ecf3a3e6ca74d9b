"""IntentSegments (the federation platform's and the peering agents' handle on a domain's
orchestrator) against a real NETCONF server of qi-intent whose verdicts the test scripts: an
orchestrator pass that began before a commit can end after it, and its verdict, about the
configuration the commit replaced, must not be taken for the verdict on the new one."""
import asyncio
import contextlib

from lxml import etree

from models.federation import Crossing
from models.intent import intent_elements, intent_state_change
from models.ns import INTENT
from netconf_core import NetconfServer, User, schema_for, standard_nacm
from netconf_core.datastore import empty_tree
from netconf_core.link import Endpoint
from orchestrator.federation import SegmentReply
from orchestrator.federation_domain import IntentSegments, intent_name
from orchestrator.federation_routes import Segment

SERVICE = "svc-1"
NAME = intent_name(SERVICE)


class ScriptedOrchestrator:
    """qi-intent over NETCONF, generations counted as the orchestrator counts them; what each
    commit is followed by (verdicts: (state, generation it is about, delay)) is the test's."""

    def __init__(self) -> None:
        self.server = NetconfServer(schema_for(("qi-intent",)), {"admin": User(password="pw")},
                                    nacm=standard_nacm(["admin"], []), name="orchestrator-a")
        self.server.on_change(self._committed)
        self.server.add_state_provider(self._state, "/qi-intent:intents")
        self.generation = 0
        self.observed: tuple[str, int] | None = None  # (state, generation it is about)
        self.after_commit: list[tuple[str, int, float]] = []
        self.tasks: list[asyncio.Task] = []

    async def _committed(self, before: etree._Element, after: etree._Element) -> None:
        if NAME in intent_elements(after) and etree.tostring(intent_elements(after)[NAME]) != \
                etree.tostring(intent_elements(before).get(NAME, etree.Element("none"))):
            self.generation += 1
            self.tasks.append(asyncio.get_running_loop().create_task(self._verdicts(list(self.after_commit))))

    async def _verdicts(self, verdicts: list[tuple[str, int, float]]) -> None:
        for state, generation, delay in verdicts:
            await asyncio.sleep(delay)
            self.observed = (state, generation)
            transition = type("T", (), {"from_state": None, "to_state": state, "time": "2026-12-04T00:00:00Z",
                                        "reason": f"{state} on generation {generation}"})
            await self.server.notify(intent_state_change(NAME, transition, generation))

    async def _state(self) -> etree._Element:
        tree = empty_tree()
        intents = etree.SubElement(tree, INTENT("intents"), nsmap={None: INTENT})
        if self.generation:
            intent = INTENT.sub(intents, "intent")
            INTENT.sub(intent, "name", NAME)
            INTENT.sub(intent, "generation", self.generation)
            if self.observed is not None:
                INTENT.sub(intent, "observed-generation", self.observed[1])
                INTENT.sub(intent, "state", self.observed[0])
        return tree


def segment(rate: int) -> Segment:
    """Domain A's segment of a service from its sae-a to sae-b of member B."""
    return Segment(0, "A", rate, "sae-a", "sae-b", egress=Crossing("a2-b1", "qkd-a2", "B", "qkd-b1"),
                   source_km="km-a", destination_km="km-b")


@contextlib.asynccontextmanager
async def segments_of_a(reports: list[SegmentReply]):
    """A's scripted orchestrator and an IntentSegments over it, whose reports go to `reports`."""
    orchestrator = ScriptedOrchestrator()
    await orchestrator.server.start()

    async def on_change(service_id: str, member_id: str, reply: SegmentReply) -> None:
        reports.append(reply)
    segments = IntentSegments("A", Endpoint("orchestrator-a", "127.0.0.1", orchestrator.server.port, "admin", "pw",
                                            host_key=orchestrator.server.public_host_key), on_change)
    segments.start()
    try:
        yield orchestrator, segments
    finally:
        await segments.stop()
        for task in orchestrator.tasks:
            task.cancel()
        await orchestrator.server.stop()


def test_a_verdict_on_the_configuration_a_commit_replaced_is_passed_over():
    async def scenario():
        reports: list[SegmentReply] = []
        async with segments_of_a(reports) as (orchestrator, segments):
            orchestrator.after_commit = [("active", 1, 0.05)]
            assert (await segments.request_segment(SERVICE, segment(1000))).status == "active"

            # The segment changes. A pass that began before the commit fails the old
            # configuration after it; the pass on the new one makes it active.
            orchestrator.after_commit = [("failed", 1, 0.0), ("active", 2, 0.5)]
            reply = await segments.request_segment(SERVICE, segment(2000))
            assert (reply.status, reply.reason) == ("active", "active on generation 2"), reply

            # Asked again with the same configuration, the answer is read from the state.
            assert (await segments.request_segment(SERVICE, segment(2000))).status == "active"

            # Later changes are told to the platform, except the verdicts on replaced ones.
            await orchestrator._verdicts([("failed", 1, 0.0), ("degraded", 2, 0.0)])
            async with asyncio.timeout(10):
                while not reports:
                    await asyncio.sleep(0.05)
            assert [r.status for r in reports] == ["degraded"], reports
    asyncio.run(scenario())


def test_a_state_not_yet_about_the_configuration_is_not_an_answer():
    """While the orchestrator has not been through a pass on the intent's configuration now,
    the state it shows is no verdict: the request says pending rather than the old state."""
    async def scenario():
        async with segments_of_a([]) as (orchestrator, segments):
            orchestrator.after_commit = [("failed", 0, 0.0)]  # about no configuration of this intent
            reply = await segments.request_segment(SERVICE, segment(1000))
            assert reply.status == "pending", reply
            assert (await segments.request_segment(SERVICE, segment(1000))).status == "pending"
            orchestrator.observed = ("active", 1)  # a pass on generation 1 that notified nothing
            assert (await segments.request_segment(SERVICE, segment(1000))).status == "active"
    asyncio.run(scenario())
