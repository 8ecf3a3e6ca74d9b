"""Entanglement intents (qi-entanglement-intent): a qi-intent intent with entanglement-service
asks for Bell pairs between two application endpoints. It goes through the lifecycle of a
key intent (orchestrator/lifecycle.py), with the same history and conditions, and is carried
by a session of the entanglement service controller (qi-entanglement-service), which plans
it over the fabric, installs it on the quantum nodes and re-plans it on faults.

Each pass of the orchestrator's reconcile loop reads the sessions and, per entanglement
intent, writes its session when the controller holds another request (or none), then follows
the session's status: installing while the controller installs it, active once pairs flow,
degraded when the session is, repairing then active again when it moves to another path, and
failed with the session's reason verbatim ('best achievable fidelity 0.87 < 0.99 requested')
when no plan meets the request; a failed intent is compiled again once the session is no
longer failed. A deleted or disabled intent's session is removed. Conditions: path-found,
installed, fidelity-met (the plan's expected fidelity, and the delivered one once pairs
were delivered, reach min-fidelity), rate-met (the plan's expected rate reaches the asked
pair rate) and ready.
"""
from __future__ import annotations

from typing import Any

from lxml import etree

from models import entanglement as es_model
from models.entanglement import EntanglementView, PlanHop, SessionStatus
from models.entanglement_intent import EntanglementIntent, condition_type, state_element
from models.intent import clip
from models.ns import INTENT
from orchestrator import lifecycle
from orchestrator.store import IntentRecord, timestamp

STRATUM = "entanglement"
REASONS = {
    "path-found": ("PathFound", "NoPath"),
    "installed": ("Installed", "NotInstalled"),
    "fidelity-met": ("FidelityMet", "FidelityBelowMinimum"),
    "rate-met": ("RateMet", "RateBelowMinimum"),
    "ready": ("Ready", "NotReady"),
}


def is_entanglement(record: IntentRecord) -> bool:
    return EntanglementIntent.read(etree.fromstring(record.config)) is not None


class EntanglementIntents:
    """The orchestrator's handling of entanglement intents (a part of its reconcile pass)."""

    def __init__(self, orchestrator: Any) -> None:
        """`orchestrator`: the Orchestrator (orchestrator/intents.py) whose store, transitions
        and strata this uses; not imported here, which would make the two modules a cycle."""
        self.orchestrator = orchestrator

    async def reconcile(self, records: list[IntentRecord]) -> bool:
        """One pass over the entanglement intents; True while one is in progress."""
        o = self.orchestrator
        view = EntanglementView.parse(await o._get(STRATUM, es_model.FILTER))
        busy = False
        for record in records:
            intent = EntanglementIntent.read(etree.fromstring(record.config))
            enabled = INTENT.text(etree.fromstring(record.config), "enabled", "true") == "true"
            if record.deleted or not enabled:
                await self._tear_down(record, view, "deleted by the operator" if record.deleted
                                      else "disabled by the operator")
                continue
            busy |= await self._advance(record, intent, view)
        return busy

    async def _tear_down(self, record: IntentRecord, view: EntanglementView, why: str) -> None:
        o = self.orchestrator
        if record.state != "removed":
            if record.state != "removing":
                await o._transition(record, "removing", why)
            if record.name in view.requests:
                await o._edit(STRATUM, es_model.session_removal(record.name))
            o.store.set_status(record.name, {"ended": why})
            record.status = {"ended": why}
            await o._transition(record, "removed", f"{why}: entanglement session {record.name} removed")
        if record.deleted:
            o.store.forget(record.name)

    async def _advance(self, record: IntentRecord, intent: EntanglementIntent, view: EntanglementView) -> bool:
        o = self.orchestrator
        if record.state == "removing":
            await o._transition(record, "removed", "the intent was enabled again before its removal finished")
        if record.state == "removed":
            await o._transition(record, "planned", "enabled by the operator")
        if record.state == "planned":
            await o._transition(record, "compiling", "decomposing over the entanglement strata")
        request = intent.session()
        if view.requests.get(intent.name) != request:
            await o._edit(STRATUM, request.config())
            view = EntanglementView.parse(await o._get(STRATUM, es_model.FILTER))
        session = view.sessions.get(intent.name)
        status = session.status if session is not None else None
        previous_path = record.status.get("path")
        if status == "failed":
            await self._fail(record, session.reason or "the entanglement session failed")
        elif status in ("active", "completed", "degraded"):
            moved = previous_path is not None and session.path and list(session.path) != previous_path
            if record.state == "failed":
                await o._transition(record, "compiling", "a plan meets the request again")
            if record.state == "compiling":
                await o._transition(record, "installing", session.reason or "installing")
            if record.state == "active" and (moved or status == "degraded"):
                await o._transition(record, "degraded" if status == "degraded" else "repairing",
                                    session.reason or "re-planned")
            if record.state == "degraded" and status != "degraded":
                await o._transition(record, "repairing", f"re-planned: {session.reason}")
            if status == "degraded" and record.state in ("installing", "repairing"):
                await o._transition(record, "degraded", session.reason or "degraded")
            elif status != "degraded" and record.state in ("installing", "repairing"):
                await o._transition(record, "active", session.reason or "pairs flow")
        elif session is not None:  # planning or installing
            if record.state in lifecycle.REALISED:  # the controller moves the session to another plan
                await o._transition(record, "repairing", f"re-planning: {session.reason or status}")
            if record.state == "failed":
                await o._transition(record, "compiling", "a plan meets the request again")
            if record.state == "compiling":
                await o._transition(record, "installing", session.reason or "installing")
            elif record.reason != (session.reason or "") and record.state == "installing":
                o.store.set_reason(record.name, clip(session.reason or ""))
                record.reason = session.reason or ""
        self._record_status(record, intent, session)
        return record.state not in ("active", "failed", "degraded")

    async def _fail(self, record: IntentRecord, why: str) -> None:
        o = self.orchestrator
        if record.state == "compiling" or record.state == "installing" or record.state == "repairing":
            await o._transition(record, "failed", why)
        elif record.state == "active":
            await o._transition(record, "degraded", why)
            await o._transition(record, "failed", why)
        elif record.state == "degraded":
            await o._transition(record, "failed", why)
        elif record.state == "failed" and record.reason != why:
            o.store.set_reason(record.name, clip(why))
            record.reason = why

    def _record_status(self, record: IntentRecord, intent: EntanglementIntent, session: SessionStatus | None) -> None:
        previous = record.status
        planned = session is not None and bool(session.hops)
        expected_fidelity = session.expected_fidelity if planned else None
        delivered = session.delivered_fidelity if session is not None else None
        fidelity_ok = planned and expected_fidelity + 1e-9 >= intent.min_fidelity and (
            delivered is None or delivered + 1e-9 >= intent.min_fidelity)
        rate = session.expected_rate if planned else None
        values = {
            "path-found": (planned, session.reason if session is not None and session.reason else "no plan yet"),
            "installed": (record.state in lifecycle.REALISED, f"state {record.state}"),
            "fidelity-met": (fidelity_ok, f"expected fidelity {expected_fidelity:.3f}"
                             + (f", delivered {delivered:.3f}" if delivered is not None else "")
                             + f", {intent.min_fidelity:.3f} asked" if planned
                             else (session.reason if session is not None and session.reason else "no plan")),
            "rate-met": (rate is not None and rate + 1e-9 >= intent.rate,
                         f"{rate:.3f} pairs/s expected, {intent.rate:.3f} asked" if rate is not None else "no pairs"),
            "ready": (record.state == "active", "pairs flow as asked" if record.state == "active"
                      else f"state {record.state}"),
        }
        conditions = {}
        for kind, (holds, message) in values.items():
            flag = "true" if holds else "false"
            before = previous.get("conditions", {}).get(kind, {})
            since = before.get("last-transition-time") if before.get("status") == flag else timestamp()
            conditions[kind] = {"status": flag, "reason": REASONS[kind][0 if holds else 1], "message": message,
                                "last-transition-time": since}
        status = {
            "session": intent.name if session is not None else None,
            "path": list(session.path) if planned else None,
            "paths": [{"in-use": record.state in lifecycle.REALISED,
                       "hops": [{"node-id": h.node_id, "link-id": h.link_id} for h in session.hops]}] if planned else [],
            "conditions": conditions,
            "entanglement": {"hops": [[h.index, h.node_id, h.link_id, h.purification_rounds, h.swap_step]
                                      for h in session.hops] if planned else [],
                             "rate": rate, "fidelity": expected_fidelity, "delivered-fidelity": delivered,
                             "best": session.best_fidelity if session is not None else None},
        }
        if status != previous:
            record.status = status
            self.orchestrator.store.set_status(record.name, status)


def augment_state(intent: etree._Element, status: dict) -> None:
    """Add an entanglement intent's own state to its qi-intent state element: the fidelity-met
    condition's type, and the entanglement-service container."""
    for entry in INTENT.all(intent, "conditions/condition"):
        if INTENT.text(entry, "type") == "fidelity-met":
            condition_type(entry)
    info = status.get("entanglement", {})
    hops = tuple(PlanHop(*h) for h in info.get("hops", []))
    intent.append(state_element(status.get("session"), hops, info.get("rate"), info.get("fidelity"),
                                info.get("delivered-fidelity"), info.get("best")))
