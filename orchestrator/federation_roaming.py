"""Roaming (ITU-T Y.QKDNf 6.3): an intent with allow-federation whose source or destination SAE
no key manager of this domain serves is escalated to the federation platform. The orchestrator
logs in on the platform's Fa face as the domain's service-layer account, finds which member
serves the other SAE (the members' advertisements: service discovery), and asks for a
cross-domain service between the two SAEs, paid by its own member; the platform routes it and
asks each domain on the route for its segment. The intent follows the service: its state says
the domains and segments in use, and it is active, degraded, being set up or failed as the
service is, with the platform's reason.

Which member this domain is: the one given (`member_id`), or else the member that pays for the
services the platform shows this account (only its own member's), or else the member that
advertises an SAE of this domain's key managers. While the service stratum knows no SAE of the
domain (it has just started), an intent that may roam waits, unless it holds a service already
(its SAE may have moved away); a new one says so (`waiting_for_saes`: installing, its
conditions' reason SaesUnknown). The service's id is `roam-<member>-<intent>` (a digest
when that is too long), so that intents of two domains never share one.

Falling back: once both SAEs are served by this domain again (an SAE moved home), the
orchestrator releases the service and realises the intent locally, as any other (an active
intent goes through repairing, `back_home`, until its local session delivers); the keys
stop for as long as a re-route takes (the local session needs the SAE pair the service's
segment held). Failures, each with its reason: no platform configured; the platform cannot
be reached; an SAE no member advertises; no member advertises an SAE of this domain; the
platform's own (no route, a segment that failed).
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Callable

import asyncssh
import networkx as nx
from lxml import etree

from models.federation import (FederationConfig, ServiceRequest, read_service_statuses, service_config,
                               service_delete)
from models.intent import IntentSpec
from models.ns import FEDERATION
from netconf_core.client import SessionClosedError
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint
from orchestrator import lifecycle
from orchestrator.store import timestamp

SERVICE_PREFIX = "roam-"
PLATFORM_WAIT_S = 3.0  # how long a pass waits for the platform's session
PLATFORM_ERRORS = (RPCError, SessionClosedError, OSError, asyncio.TimeoutError, asyncssh.Error)
FEDERATION_FILTER = f'<federation xmlns="{FEDERATION}"><advertisements/><services/></federation>'
# platform service status -> where the intent is
INTENT_STATE = {"active": "active", "degraded": "degraded", "failed": "failed", "rejected": "failed"}
CONDITION_REASONS = {"federated": ("SegmentsAccepted", "NotFederated"), "path-found": ("RouteFound", "NoRoute"),
                     "ready": ("Ready", "NotReady")}
# The lifecycle as a graph, without removal: the shortest walk from one state to another.
LIFECYCLE = nx.DiGraph([(a, b) for a, targets in lifecycle.ALLOWED.items() for b in targets
                        if {a, b}.isdisjoint({"removing", "removed"})])


def service_name(member_id: str, intent: str) -> str:
    """The platform service that serves `intent` of `member_id` (a qit:identifier)."""
    name = f"{SERVICE_PREFIX}{member_id}-{intent}"
    return name if len(name) <= 64 else SERVICE_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:40]


def roams(spec: IntentSpec, local_saes: dict[str, str]) -> bool:
    """Whether an intent is escalated: allow-federation, and an SAE this domain does not serve."""
    return spec.allow_federation and spec.segment is None and not (
        spec.source_sae in local_saes and spec.destination_sae in local_saes)


def walk(from_state: str, to_state: str) -> list[str]:
    """The states an intent passes through to get from one state to another (not removal)."""
    return nx.shortest_path(LIFECYCLE, from_state, to_state)[1:] if from_state != to_state else []


@dataclass(frozen=True)
class Verdict:
    """Where a roaming intent stands: the lifecycle state it should be in, why, and the state
    of its federation service (None when there is none)."""

    state: str
    reason: str
    federation: dict | None = None
    unmet: str | None = None  # the reason of its conditions that do not hold, when not their usual one

    def status(self, previous: dict) -> dict:
        """The intent's status record (see models/intent.py intent_state)."""
        fed = self.federation or {}
        route = fed.get("domains", [])
        holds = {"federated": (fed.get("status") in ("active", "degraded"),
                               f"service {fed.get('service')} is {fed.get('status')}" if fed else self.reason),
                 "path-found": (bool(route), f"route {' - '.join(route)}" if route else self.reason),
                 "ready": (self.state == "active", self.reason)}
        conditions = {}
        for kind, (true, message) in holds.items():
            status = "true" if true else "false"
            before = previous.get("conditions", {}).get(kind, {})
            conditions[kind] = {"status": status, "reason": CONDITION_REASONS[kind][0] if true else
                                (self.unmet or CONDITION_REASONS[kind][1]),
                                "message": message, "last-transition-time": before.get("last-transition-time")
                                if before.get("status") == status else timestamp()}
        paths = [{"in-use": self.state in lifecycle.REALISED, "hops": [], "domains": route}] if route else []
        return {"federation": self.federation, "paths": paths, "conditions": conditions, "session": None,
                "steer": [], "observed-rate": None, "available-rate": None}


def waiting_for_saes(spec: IntentSpec) -> Verdict:
    """Where a new intent that may roam stands while the service stratum reports no SAE."""
    return Verdict("installing", f"waiting for the service stratum, which reports no SAE of this domain's key "
                                 f"managers yet: whether {spec.source_sae} and {spec.destination_sae} are served here "
                                 "or the intent must roam to another member is not known", unmet="SaesUnknown")


def back_home(service: str) -> str:
    """Why a roaming intent is realised in its domain again."""
    return (f"both SAEs are served by this domain again: federation service {service} released, realising the "
            "intent locally")


class Roaming:
    """The orchestrator's side of roaming. `platform`: how to reach the federation platform as
    the domain's service-layer account (None: no platform configured); `on_change` wakes the
    orchestrator when a service's status changes at the platform."""

    def __init__(self, platform: Endpoint | None, member_id: str | None, on_change: Callable[[], None]):
        self.platform = platform
        self.member_id = member_id
        self.on_change = on_change
        self.link = DeviceLink(platform, ("qi-federation",), on_notification=self._notified) \
            if platform is not None else None

    def start(self) -> None:
        if self.link is not None:
            self.link.start()

    async def stop(self) -> None:
        if self.link is not None:
            await self.link.stop()

    async def _notified(self, link: DeviceLink, notification: etree._Element) -> None:
        if FEDERATION.find(notification, "service-status-change") is not None:
            self.on_change()

    async def serve(self, specs: list[IntentSpec], local_saes: dict[str, str]) -> dict[str, Verdict]:
        """One pass over the roaming intents: each one's service at the platform as it should be
        (written when it is not), and where each intent stands."""
        if not specs:
            return {}
        if self.link is None:
            return {spec.name: Verdict("failed", f"SAE {self._remote(spec, local_saes)} is not served by this "
                                                 "domain's key managers, and no federation platform is configured "
                                                 "to look beyond this domain") for spec in specs}
        try:
            nc = await self.link.session(PLATFORM_WAIT_S)
            data = await nc.get(("subtree", FEDERATION_FILTER))
        except PLATFORM_ERRORS as err:
            why = err.message if isinstance(err, RPCError) else f"{type(err).__name__}: {err}"
            return {spec.name: Verdict("failed", f"the federation platform cannot be reached ({why}), so SAE "
                                                 f"{self._remote(spec, local_saes)}, which this domain does not "
                                                 "serve, cannot be looked for") for spec in specs}
        config, statuses = FederationConfig.read(data), read_service_statuses(data)
        serving: dict[str, set[str]] = {}
        for member, sae in config.sae_kms:
            serving.setdefault(sae, set()).add(member)
        # The platform shows this account only its own member's services; else, whoever advertises our SAEs.
        home = self.member_id or next((r.requesting_member for r in config.services.values()), None) or next(
            (m for m, sae in sorted(config.sae_kms) if sae in local_saes), None)
        verdicts = {}
        for spec in specs:
            try:
                request = self._request(spec, home, local_saes, serving, config)
            except LookupError as err:
                verdicts[spec.name] = Verdict("failed", str(err))
                continue
            if config.services.get(request.service_id) != request:
                try:
                    await nc.edit_config(service_config(request))
                except RPCError as err:
                    verdicts[spec.name] = Verdict("failed", f"the federation platform refused service "
                                                            f"{request.service_id}: {err.message}")
                    continue
                statuses.pop(request.service_id, None)  # the old request's status says nothing of the new
            verdicts[spec.name] = self._verdict(request, statuses.get(request.service_id))
        return verdicts

    def _remote(self, spec: IntentSpec, local_saes: dict[str, str]) -> str:
        return spec.destination_sae if spec.source_sae in local_saes else spec.source_sae

    def _request(self, spec: IntentSpec, home: str | None, local_saes: dict[str, str],
                 serving: dict[str, set[str]], config: FederationConfig) -> ServiceRequest:
        """The service the intent needs; LookupError saying why there is none."""
        if home is None:
            raise LookupError("no member of the federation advertises an SAE of this domain's key managers, so this "
                              "domain cannot tell which member it is (give the orchestrator its member id)")
        name = service_name(home, spec.name)
        current = config.services.get(name)
        ends = []
        for sae, was in ((spec.source_sae, current.source_domain if current else None),
                         (spec.destination_sae, current.destination_domain if current else None)):
            if sae in local_saes:
                ends.append(home)
                continue
            members = serving.get(sae, set())
            if not members:
                raise LookupError(f"SAE {sae} is not served by this domain and is unknown to every member of the "
                                  "federation (no member advertises it)")
            # Where it was asked for while that member still serves it: an SAE that is being
            # moved (served by two members for a while) does not move the service twice.
            ends.append(was if was in members else sorted(members - {home}, key=str)[0] if members - {home}
                        else home)
        return ServiceRequest(name, home, spec.source_sae, ends[0], spec.destination_sae, ends[1], spec.min_rate)

    def _verdict(self, request: ServiceRequest, service) -> Verdict:
        name = request.service_id
        if service is None or not service.status:
            return Verdict("installing", f"asked the federation platform for service {name} from {request.source_sae} "
                                         f"({request.source_domain}) to {request.destination_sae} "
                                         f"({request.destination_domain})",
                           {"service": name, "status": "requested", "source-domain": request.source_domain,
                            "destination-domain": request.destination_domain, "domains": [], "segments": []})
        federation = {"service": name, "status": service.status,
                      "source-domain": service.source_domain or request.source_domain,
                      "destination-domain": service.destination_domain or request.destination_domain,
                      "domains": list(service.route),
                      "segments": [{"index": s.index, "domain": s.domain, "status": s.status}
                                   for s in service.segments]}
        state = INTENT_STATE.get(service.status, "installing")
        if state == "active":
            reason = f"keys flow through domains {', '.join(service.route)} (federation service {name})"
        else:
            reason = f"federation service {name} is {service.status}" + (f": {service.reason}" if service.reason
                                                                           else "")
        return Verdict(state, reason, federation)

    async def release(self, service: str) -> None:
        """Delete a service this orchestrator asked for (nothing if it is gone already)."""
        if self.link is None:
            return
        nc = await self.link.session(PLATFORM_WAIT_S)
        await nc.edit_config(service_delete(service))
