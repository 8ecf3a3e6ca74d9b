"""qi-entanglement-intent: the entanglement-service part of a qi-intent intent. The orchestrator
reads it with `EntanglementIntent.read` (None for a key intent) and builds its state here;
the session it asks of the entanglement service controller is `EntanglementIntent.session`."""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from models.entanglement import PlanHop, SessionRequest, plan_element
from models.ns import ENTANGLEMENT_INTENT as EI, INTENT
from netconf_core.ns import decimal

CONDITION = "fidelity-met"
PREFIX = "qi-eint"


@dataclass(frozen=True)
class EntanglementIntent:
    name: str
    source: str          # application endpoints
    destination: str
    min_rate: int        # pairs per second, qi-intent's min-rate
    min_fidelity: float
    pair_rate: float | None = None
    number_of_pairs: int | None = None
    max_age_s: float | None = None
    delivery_type: str = "create-and-keep"
    bases: tuple[str, ...] = ()
    max_rounds: int = 3
    max_hops: int | None = None
    avoid_nodes: tuple[str, ...] = ()

    @classmethod
    def read(cls, intent: etree._Element) -> EntanglementIntent | None:
        service = EI.find(intent, "entanglement-service")
        if service is None:
            return None
        number = EI.number
        hops = INTENT.text(intent, "max-hops")
        return cls(INTENT.text(intent, "name", ""), INTENT.text(intent, "endpoints/source-sae", ""),
                   INTENT.text(intent, "endpoints/destination-sae", ""), int(INTENT.text(intent, "min-rate", "0")),
                   number(service, "min-fidelity") or 0.5, number(service, "pair-rate"),
                   int(EI.text(service, "number-of-pairs")) if EI.text(service, "number-of-pairs") else None,
                   number(service, "max-age"), EI.text(service, "delivery-type", "create-and-keep"),
                   tuple(b.text for b in EI.all(service, "basis")),
                   int(EI.text(service, "max-purification-rounds", "3")), int(hops) if hops else None,
                   tuple(n.text for n in INTENT.all(intent, "avoid-nodes")))

    @property
    def rate(self) -> float:
        """Pairs per second asked: pair-rate when given (finer than min-rate), else min-rate."""
        return self.pair_rate if self.pair_rate is not None else float(self.min_rate)

    def session(self) -> SessionRequest:
        return SessionRequest(self.name, self.source, self.destination, self.min_fidelity, None, None,
                              self.rate if self.rate > 0 else None, self.number_of_pairs, self.max_age_s,
                              self.delivery_type, self.bases if self.delivery_type == "measure-directly" else (),
                              self.max_hops, self.avoid_nodes)


def condition_type(entry: etree._Element) -> None:
    """Make a qi-intent condition entry's type the fidelity-met identity of this module, with its
    prefix declared on the leaf (another namespace than the leaf's own, so it is kept)."""
    old = INTENT.find(entry, "type")
    leaf = etree.Element(INTENT("type"), nsmap={PREFIX: str(EI)})
    leaf.text = f"{PREFIX}:{CONDITION}"
    if old is not None:
        old.addprevious(leaf)
        entry.remove(old)
    else:
        entry.insert(0, leaf)


def state_element(session: str | None, hops: tuple[PlanHop, ...], rate: float | None, fidelity: float | None,
                  delivered_fidelity: float | None, best_fidelity: float | None) -> etree._Element:
    """The config false part of <entanglement-service>."""
    container = EI.element("entanglement-service")
    if hops:
        plan_element(EI.sub(container, "plan"), hops, rate, fidelity, ns=EI)
    for tag, value in (("delivered-fidelity", delivered_fidelity), ("best-achievable-fidelity", best_fidelity)):
        if value is not None:
            EI.sub(container, tag, decimal(min(1.0, max(0.0, value)), 6))
    if session:
        EI.sub(container, "session", session)
    return container
