"""The fibre plant of one emulated network as a NETCONF server (qi-fibre-plant).

This is the synthetic environment's own management interface, not a network element: it
shows the sites, switches and spans of the twin (state), sets the speed of the network's
emulated clock (configuration), and injects the faults of the fibre: cut-span, repair-span,
attach-eavesdropper and remove-eavesdropper are RPCs that act on the twin through the twin
service, which tells every device concerned. Every span change, whoever made it, is sent as
span-status-change.

A plant device shows the spans of the topology it is given: the whole network, or in a
multi-domain network one domain's own part (`Topology.domain_part`), so that each operator's
connectivity controller sees its own fibre only.
"""
from __future__ import annotations


from lxml import etree

from devices.base import Device, NetworkContext
from devices.topology import Topology
from devices.twin import Endpoint, PlantChange
from devices.twin_service import TwinError
from netconf_core.datastore import empty_tree
from models.connectivity import Span, Switch, SwitchPort, TermPoint, plant_state, tp_id
from models.ns import FIBRE_PLANT as NS
from netconf_core.errors import RPCError
from netconf_core.ns import decimal, localname
from netconf_core.session import Session

MODULE = "qi-fibre-plant"
DEVICE_ID = "fibre-plant"
# twin change kind -> the model's plant-change
CHANGES = {"span-cut": "cut", "span-repaired": "repaired",
           "eavesdropper-attached": "eavesdropper-attached", "eavesdropper-removed": "eavesdropper-removed"}


class FibrePlantDevice(Device):
    kind = "fibre-plant"
    modules = (MODULE,)
    watches_plant = True
    state_paths = (f"/{MODULE}:fibre-plant",)

    def __init__(self, topology: Topology, network: NetworkContext, port: int = 0, device_id: str = DEVICE_ID):
        self.topology = topology
        self.span_ids = {span.id for span in topology.spans}
        super().__init__(device_id, network, port)
        self.server.add_rpc(f"/{MODULE}:cut-span", self._cut)
        self.server.add_rpc(f"/{MODULE}:repair-span", self._repair)
        self.server.add_rpc(f"/{MODULE}:attach-eavesdropper", self._attach)
        self.server.add_rpc(f"/{MODULE}:remove-eavesdropper", self._remove)

    def initial_config(self) -> list[etree._Element]:
        """The clock runs at the speed the network was built with."""
        plant = NS.element("fibre-plant")
        plant.append(NS.element("clock", leaves={"speed": decimal(self.twin.clock.speed, 3)}))
        return [plant]

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        config = self.server.with_defaults(after, "report-all", config_only=True)
        speed = float(NS.text(config, "fibre-plant/clock/speed"))
        if decimal(speed, 3) != decimal(self.twin.clock.speed, 3):
            await self._ask("PUT", "/clock", {"speed": speed}, f"/{MODULE}:fibre-plant/clock/speed")

    async def _ask(self, method: str, path: str, body: dict, where: str) -> dict:
        try:
            return await self.twin.request(method, path, self.id, body)
        except TwinError as error:
            raise RPCError("operation-failed", f"the twin service refused: {error}", path=where,
                           path_nsmap={MODULE: NS}) from None

    async def state(self) -> etree._Element:
        plant = await self.twin.refresh_plant()
        switches = [Switch(s.id, s.site, s.insertion_loss_db, {port: SwitchPort(port) for port in s.ports})
                    for s in self.topology.switches]
        spans = [Span(i, _point(Endpoint.parse(s["a"])), _point(Endpoint.parse(s["b"])), s["length_km"],
                      s["attenuation_db_per_km"], s["loss_db"], not s["cut"], s["eavesdrop_fraction"])
                 for i, s in plant["spans"].items() if i in self.span_ids]
        data = empty_tree()
        data.append(plant_state(self.topology.name, self.twin.clock.now(),
                                [(s.id, s.name) for s in self.topology.sites], switches, spans))
        return data

    # -- faults ------------------------------------------------------------------------------

    def _span_id(self, operation: etree._Element) -> str:
        span_id = operation.findtext(NS("span-id"))
        if span_id not in self.span_ids:
            name = localname(operation)
            raise RPCError("invalid-value", f"network {self.topology.name!r} has no span {span_id!r}",
                           path=f"/{MODULE}:{name}/span-id", path_nsmap={MODULE: NS},
                           info={"bad-element": "span-id"})
        return span_id

    async def _span(self, operation: etree._Element, action: str, **extra: object) -> None:
        span_id = self._span_id(operation)
        await self._ask("POST", f"/spans/{span_id}", {"action": action, **extra}, f"/{MODULE}:{localname(operation)}")

    async def _cut(self, session: Session, operation: etree._Element, context: etree._Element | None) -> None:
        await self._span(operation, "cut")

    async def _repair(self, session: Session, operation: etree._Element, context: etree._Element | None) -> None:
        await self._span(operation, "repair")

    async def _attach(self, session: Session, operation: etree._Element, context: etree._Element | None) -> None:
        await self._span(operation, "attach-eavesdropper", fraction=float(NS.text(operation, "fraction")))

    async def _remove(self, session: Session, operation: etree._Element, context: etree._Element | None) -> None:
        await self._span(operation, "remove-eavesdropper")

    def plant_changed(self, change: PlantChange) -> None:
        if change.kind not in CHANGES or change.element not in self.span_ids:
            return  # cross-connects are the switches' to report; other plants report their spans
        span = self.twin.plant["spans"][change.element]   # the client refreshed it before telling us
        self.spawn(self.notify(NS.element("span-status-change", leaves={
            "span-id": change.element, "change": CHANGES[change.kind], "status": "cut" if span["cut"] else "up",
            "eavesdropper-fraction": decimal(span["eavesdrop_fraction"], 9)})))


def _point(end: Endpoint) -> TermPoint:
    return TermPoint(end.node, tp_id(end.port))
