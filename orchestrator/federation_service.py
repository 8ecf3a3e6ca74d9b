"""The federation's standing services: the platform and one member's agent, each as its own
process would run it (`qstrata run federation`, `qstrata run federation-agent`).

`MemberOrchestrators` is the platform's way to its members' orchestrators (the
`segment_handlers` factory): an `IntentSegments` per member whose orchestrator host key the
platform trusts, reached where the member's agent registered it, logging in with the
platform's own key. A member whose host key is not pinned gets no handler: its segments fail
with "no way to reach the agent", and nothing is sent to a server nobody vouched for. The
in-process federation (tools/federated_stack.py) and the platform's process both use it.

`StandingMember` keeps one member domain in the federation without an operator at hand: a
`FederatedDomain` over the domain's forwarding controller, orchestrator and key managers, and
a reconcile loop that applies for membership (once: a member whose key already logs in has
applied), waits for the administrator's admission, then lets the member's service users
request services, and configures the domain's border key managers with the KM-to-KM address
of the key manager across each inter-domain link (its operator's peering agreement).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import asyncssh
from lxml import etree

from models.key_manager import KmConfig, km_edit
from netconf_core import ReconcileLoop
from netconf_core.client import SessionClosedError
from netconf_core.errors import RPCError
from netconf_core.link import Endpoint
from orchestrator.federation import AgentEndpoint, FederationPlatform
from orchestrator.federation_domain import FederatedDomain, IntentSegments

log = logging.getLogger(__name__)

MEMBERSHIP_POLL_S = 0.5    # between two looks at the membership while waiting for admission
BACKOFF_CAP_S = 10.0
ERRORS = (RPCError, SessionClosedError, OSError, asyncio.TimeoutError, asyncssh.Error)


@dataclass(frozen=True)
class OrchestratorPin:
    """How the platform knows a member's orchestrator: its host key line, or a known_hosts file."""

    host_key: str | None = None
    known_hosts: str | None = None


class MemberOrchestrators:
    """The platform's segment handlers. `pins(member_id)` is the orchestrator's pinned host key
    (None: not trusted); `client_key` and `user`: how the platform logs in there; `on_change`:
    the platform's segment_changed (set once the platform exists)."""

    def __init__(self, client_key, pins: Callable[[str], OrchestratorPin | None], user: str = "federation"):
        self.client_key = client_key
        self.pins = pins
        self.user = user
        self.on_change: Callable[..., Awaitable[None]] | None = None
        self.handlers: list[IntentSegments] = []

    def __call__(self, agent: AgentEndpoint) -> IntentSegments | None:
        pin = self.pins(agent.member_id)
        if agent.address is None or pin is None or self.on_change is None:
            return None
        handler = IntentSegments(agent.member_id, Endpoint(
            f"orchestrator of {agent.member_id}", agent.address, agent.port, self.user,
            client_keys=(self.client_key,), host_key=pin.host_key, known_hosts=pin.known_hosts), self.on_change)
        handler.start()
        self.handlers.append(handler)
        return handler

    async def stop(self) -> None:
        for handler in self.handlers:
            await handler.stop()
        self.handlers = []


class StandingPlatform:
    """The federation platform with its way to the members' orchestrators."""

    def __init__(self, platform: FederationPlatform, orchestrators: MemberOrchestrators):
        self.platform = platform
        self.orchestrators = orchestrators
        orchestrators.on_change = platform.segment_changed

    @property
    def port(self) -> int:
        return self.platform.port

    @property
    def server(self):
        return self.platform.server

    async def start(self) -> None:
        await self.platform.start()

    async def stop(self) -> None:
        await self.platform.stop()
        await self.orchestrators.stop()


async def peer_key_managers(key_managers: dict[str, Endpoint], peers: dict[str, dict[str, str]]) -> None:
    """Give each key manager (by km-id) the KM-to-KM URLs of its peers across inter-domain links
    (km-id -> URL); a domain's service controller configures the peers it manages itself and
    leaves these as they are."""
    for km, wanted in peers.items():
        edit = km_edit(KmConfig(), KmConfig(peers=wanted))
        if edit is None:
            continue
        async with await key_managers[km].connect() as nc:
            await nc.edit_config(etree.tostring(edit).decode())


class StandingMember:
    """One member domain kept in the federation (see the module docstring). `border_km_peers`:
    border key manager -> {km across the link: its KM-to-KM URL}; `service_users`: the
    platform's accounts that may request services the member pays for."""

    def __init__(self, domain: FederatedDomain, key_managers: dict[str, Endpoint],
                 border_km_peers: dict[str, dict[str, str]], service_users: tuple[str, ...] = (),
                 start_timeout: float = 60.0):
        self.domain = domain
        self.agent = domain.agent
        self.key_managers = key_managers
        self.border_km_peers = border_km_peers
        self.service_users = service_users
        self.start_timeout = start_timeout
        self.status: str | None = None            # the membership as last seen on the platform
        self.applied = asyncio.Event()            # the platform holds an application or membership
        self._peered = not border_km_peers
        self._allowed = False
        self._domain_start: asyncio.Task | None = None
        self._loop = ReconcileLoop(f"federation member {self.agent.member_id}", self._pass,
                                   backoff_initial=MEMBERSHIP_POLL_S, backoff_cap=BACKOFF_CAP_S,
                                   expected=ERRORS + (PermissionError,), logger=log)

    @property
    def member_id(self) -> str:
        return self.agent.member_id

    @property
    def links(self) -> dict:
        """The domain's levels the agent is a client of (named in a not-in-sync warning)."""
        return {"forwarding": self.domain.forwarding, "orchestrator": self.domain.orchestrator}

    async def start(self) -> None:
        self._domain_start = asyncio.get_running_loop().create_task(self._start_domain())
        self._loop.wake()
        self._loop.start()

    async def _start_domain(self) -> None:
        """Start the FederatedDomain once its forwarding controller and orchestrator answer,
        however long they take (they may start after the agent); a first pass that fails is
        tried again by the domain's own loop, at its period."""
        try:
            await self.domain.start(None)
        except ERRORS as error:
            log.warning("federation member %s: first pass failed (%s); the domain's loop tries again", self.member_id,
                        error)
            self.domain._loop.start()   # FederatedDomain.start stops short of it when its first pass fails

    async def wait_synced(self, timeout: float) -> None:
        """Until the domain's levels are reached and the platform holds the application (a
        TimeoutError after `timeout`: the ready line then comes with a warning)."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(asyncio.shield(self._domain_start), self.applied.wait())

    async def stop(self) -> None:
        await self._loop.stop()
        if self._domain_start is not None and not self._domain_start.done():
            self._domain_start.cancel()
        await asyncio.gather(*(t for t in (self._domain_start,) if t is not None), return_exceptions=True)
        await self.domain.stop()

    async def _pass(self) -> float | None:
        """Peer the border key managers; apply unless the member's key logs in already; once
        admitted, follow the federation (the agent) and allow the service users. Until then,
        look again after a while."""
        if not self._peered:
            await peer_key_managers(self.key_managers, self.border_km_peers)
            self._peered = True
        if self.status is None:
            self.status = await self._membership()
        if self.status is None or self.status == "withdrawn":
            self.status = await self.agent.apply()
        self.applied.set()
        if self.status != "admitted":
            self.status = await self.agent.status()
        if self.status != "admitted":
            return MEMBERSHIP_POLL_S
        if not self.agent.admitted:
            await self.agent.wait_admitted(self.start_timeout)
        if not self._allowed:
            for user in self.service_users:
                await self.agent.allow_service_user(user)
            self._allowed = True
            log.info("member %s admitted; service users %s", self.member_id, ", ".join(self.service_users) or "none")
        return None

    async def _membership(self) -> str | None:
        """The membership's status, or None when the member's key does not log in (it has not
        applied, or was withdrawn)."""
        try:
            return await self.agent.status()
        except asyncssh.PermissionDenied:
            return None
