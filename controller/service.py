"""The service controller: key-delivery sessions between SAEs (qi-service, northbound) over
the key managers (qi-key-manager, southbound), planned over the QKD topology that the
forwarding controller serves (qi-forwarding, read as any NETCONF client would).

How a session becomes keys:

1. its two SAEs are looked up in the SAE directory (the key managers' SAE lists);
2. a path of QKD nodes is planned over the forwarding topology (controller/key_paths.py):
   ACTIVE PHYS links without a QBER alarm, within the session's constraints, each with eskr
   headroom for the session's rate after the rates of the other sessions on it;
3. every key manager on the path gets routes towards both end key managers, and the two end
   key managers the application session with its token bucket, in one transaction; every key
   manager also gets the address of the peer of each of its pools (`peers`: the KM-to-KM
   interface, docs/km-protocol.md, that each key manager reports as peer-interface/url).

Two SAEs attached to one key manager need no QKD link: the session's path is that key
manager's node alone, and the key manager delivers the keys to both SAEs itself.

`plan-path` plans the same way without installing anything; with include-buildable it also
uses the PHYS links that could be built (controller/buildable.py, from the forwarding
topology and the connectivity controller's fibre network), at the key rate the link model
expects of them, and names them in its answer.

Routes are per destination key manager, so the paths of all sessions towards one key manager
must form a tree: a candidate path that would change another session's route is skipped.
Key pools follow the topology: every PHYS link between QKD nodes of two sites gets a pool on
both key managers (link-id = qkdl-id), whether the link is ACTIVE or not.

The controller is level-triggered. `reconcile` recomputes the wanted key-manager
configuration from the sessions asked for and the topology observed, keeps each placement
that is still sound, re-plans the others, and writes only the difference. A session moves
only when a link of its path goes down, raises a QBER alarm or breaks its constraints, or a
key manager on it is unreachable; when a link's eskr falls below the rates placed on it,
its sessions are degraded, not moved. It runs inside
every northbound commit (a transaction a key manager refuses refuses the commit), and when
woken by a link-status-change or alarm-notification of the forwarding controller, a key
manager (re)connecting, or the periodic resync (which also repairs drift on the key
managers). Each run reads the forwarding topology afresh, with its RFC 8632 alarm list (the
QBER alarms are state read there, never kept from events), so a wake-up that a run started
after (a commit's) has already seen does not cause another.

A session that cannot be placed is accepted as configuration; its status is failed, with a
reason naming what is missing, and it is retried whenever the controller reconciles.
Delivered keys and bits are the counters of the source SAE's key manager.

A segment session is one member domain's part of a cross-domain key service. Its SAEs are the
service's, attached here or not: its path runs from the far end of its ingress link (an
inter-domain link of the forwarding topology, whose far node is another domain's: an external
node, named with its key manager) or from the local source SAE's key manager, to the far end
of its egress link or the local destination SAE's key manager. Every local key manager on it
routes towards the key managers of the two SAEs; an end key manager whose SAE is attached
here gets the application session; the border key managers get the pools of the
inter-domain links. External nodes are never crossed by other paths. Its delivered keys are
the key managers' counts for the pair of SAEs, which outlive the session's placements: keys
sent by the source SAE's key manager, in its domain; keys that arrived at the destination
SAE's key manager, in its domain; keys passed on by the egress key manager, in between. They
are read where the session was last placed, also while it has no path.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from dataclasses import dataclass, field

from lxml import etree

from controller.base import Controller
from controller.buildable import buildable_links
from controller.key_paths import NoPath, Path, Planner
from models.alarms import raised_link_alarms, read_alarms
from models.forwarding import ForwardingView, QkdLink
from models.key_manager import (COUNTERS_FILTER, CONFIG_FILTER, PEER_INTERFACE_FILTER, KmConfig, KmCounters, KmSession,
                                KmView, km_edit, peer_interface_url)
from models.ns import ALARMS, FORWARDING, KEY_MANAGER, NW, SERVICE
from models.service import (REASON_LENGTH, Hop, ServiceView, Session, SessionConfig, append_hops,
                            session_status_change, sessions_of, sessions_selected)
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint, TransactionError
from netconf_core.notifications import now
from netconf_core.ns import NC_NOTIFICATIONS
from netconf_core.server import User

log = logging.getLogger(__name__)

FORWARDING_TIMEOUT_S = 5.0        # wait for the forwarding controller's session
STATE_TIMEOUT_S = 2.0             # per key manager, when a <get> asks for delivered keys
FORWARDING_FILTER = f'<networks xmlns="{NW}"/><alarms xmlns="{ALARMS}"><alarm-list/></alarms>'
NETWORKS_FILTER = f'<networks xmlns="{NW}"/>'


# -- the controller ----------------------------------------------------------------------------

@dataclass
class Placement:
    request: SessionConfig
    path: Path | None
    status: str
    reason: str
    since: datetime.datetime = field(default_factory=now)


class ServiceController(Controller):
    kind = "service-controller"
    modules = ("qi-service",)
    device_modules = ("qi-key-manager",)
    read_only_rpcs = (("qi-service", "plan-path"),)
    state_paths = ("/qi-service:sessions", "/qi-service:sae-directory")  # state reads key managers: only when asked
    state_takes_filter = True  # the delivered counters are read for the sessions a filter selects

    def __init__(self, name: str, devices: list[Endpoint], forwarding: Endpoint, users: dict[str, User], *,
                 connectivity: Endpoint | None = None, **kw):
        """`connectivity`, when given, is read by plan-path for the links that could be built."""
        super().__init__(name, devices, users, **kw)
        self.connectivity = connectivity
        self.forwarding = self.link(forwarding, ("qi-forwarding",), self._forwarding_connected,
                                    self._forwarding_notification)
        self.kms: dict[str, KmView] = {}            # by device (link) name
        self.km_urls: dict[str, str] = {}           # km-id -> its KM-to-KM interface (peer-interface/url)
        self.sessions: dict[str, Placement] = {}    # by session name
        self.counted_at: dict[str, tuple[str, str]] = {}  # session -> (km, counter) of its last path
        self._built: dict[Session, etree._Element] = {}   # the entries the last full state read built
        self.alarms: dict[str, str] = {}            # forwarding link id -> its raised QBER alarm, as last read
        self.link_reasons: dict[str, str] = {}      # forwarding link id -> why its status last changed
        self.synced = asyncio.Event()               # every key manager's configuration has been read
        self._lock = asyncio.Lock()                 # one reconcile (or plan) at a time
        self._wakes = 0                             # wake-ups asked so far
        self._seen = 0                              # ... that the last reconcile started after
        # No retry of a failed pass: the next wake-up tries again.
        self._loop = self.loop(name, self._reconcile_pass, backoff_initial=None, logger=log)
        self.server.add_rpc("/qi-service:plan-path", self._plan_path)

    async def start(self) -> None:
        await super().start()
        self.forwarding.start()
        self._loop.start()
        if not self.links:
            self.synced.set()
        self.wake()

    async def stop(self) -> None:
        await self._loop.stop()
        await self.forwarding.stop()
        await super().stop()

    async def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until every key manager and the forwarding controller are connected and read."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(self.synced.wait(), self.forwarding.connected.wait())

    def wake(self) -> None:
        """Ask for a reconcile soon; wake-ups that come during one are folded into the next,
        and those that a reconcile started since (a commit's) has seen are dropped."""
        self._wakes += 1
        self._loop.wake()

    async def _reconcile_pass(self) -> None:
        async with self._lock:
            if self._wakes > self._seen:
                await self._reconcile_config()

    # --- hooks of the Controller base -------------------------------------------------------

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        await self.reconcile(after)

    async def device_connected(self, link: DeviceLink) -> None:
        await self._read_km(link)
        if len(self.kms) == len(self.links):
            self.synced.set()
        self.wake()

    async def device_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        if any(":saes" in (target.text or "") for target in notification.iter(NC_NOTIFICATIONS("target"))):
            async with self._lock:  # an SAE attached or detached (one moving between domains): read it now
                await self._read_km(link)
            self.wake()
            return
        change = KEY_MANAGER.find(notification, "session-state-change")
        if change is None or KEY_MANAGER.text(change, "status") != "expired":
            return
        name = KEY_MANAGER.text(change, "session-id", "")
        async with self._lock:
            placement = self.sessions.get(name)
            if placement is not None and placement.status != "expired":
                await self._set_status(name, placement, "expired",
                                       KEY_MANAGER.text(change, "reason") or "the session's time to live has passed")

    async def resync(self) -> None:
        """Re-read every key manager (what drifted from what was written is rewritten) and reconcile."""
        async with self._lock:
            await asyncio.gather(*(self._read_km(link) for link in self.links.values() if link.connected.is_set()),
                                 return_exceptions=True)
            await self._reconcile_config()

    async def _read_km(self, link: DeviceLink) -> None:
        nc = await link.session()
        data = await nc.get_config(filter=("subtree", CONFIG_FILTER))
        root = KEY_MANAGER.find(data, "key-manager")
        if root is None:
            log.warning("%s: device %s has no key-manager configuration", self.name, link.name)
            return
        view = KmView.from_xml(root)
        url = peer_interface_url(await nc.get(filter=("subtree", PEER_INTERFACE_FILTER)))
        if url:
            self.km_urls[view.km_id] = url
        previous = self.kms.get(link.name)
        if previous is not None and self._managed(previous.config) != self._managed(view.config):
            log.warning("%s: key manager %s differs from what was written; repairing", self.name, view.km_id)
        self.kms[link.name] = view

    def _managed(self, config: KmConfig) -> KmConfig:
        """What of a key manager's configuration this controller writes: peers of another
        domain (written by its federation or peering agent) are left as configured."""
        return dataclasses.replace(config, peers={km: url for km, url in config.peers.items() if km in self.km_urls})

    async def _forwarding_connected(self, link: DeviceLink) -> None:
        self.wake()

    async def _forwarding_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        """A link's status or an alarm changed: reconcile (which reads the alarm list afresh)."""
        status = FORWARDING.find(notification, "link-status-change")
        if status is not None:
            self.link_reasons[FORWARDING.text(status, "link-id", "")] = FORWARDING.text(status, "reason", "")
        elif ALARMS.find(notification, "alarm-notification") is None:
            return
        self.wake()

    # --- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, config: etree._Element | None = None) -> None:
        """Make the key managers carry the sessions of `config` (default: running). With an
        explicit config (a commit in progress) a refused transaction is raised as RPCError."""
        async with self._lock:
            await self._reconcile_config(config)

    async def _reconcile_config(self, config: etree._Element | None = None) -> None:
        """Reconcile (under the lock); it reads the forwarding topology afresh, so it covers the
        wake-ups asked before it started."""
        wakes = self._wakes
        running = config if config is not None else self.server.running()
        await self._reconcile(self._requests(running), refuse=config is not None)
        self._seen = max(self._seen, wakes)

    @staticmethod
    def _requests(config: etree._Element) -> dict[str, SessionConfig]:
        return sessions_of(config)

    async def _reconcile(self, requests: dict[str, SessionConfig], refuse: bool) -> None:
        try:
            view: ForwardingView | None = await self._read_forwarding()
            unavailable = ""
        except (RPCError, OSError, asyncio.TimeoutError) as err:
            view, unavailable = None, f"the forwarding topology is unavailable: {err}"
        placements = await self._place(requests, view, unavailable)
        wanted = self._wanted(placements, view)
        edits = {link: edit for link, want in wanted.items()
                 if (edit := km_edit(self.kms[link].config, want)) is not None}
        try:
            await self.transaction(edits)
        except TransactionError as err:
            if refuse:
                raise err.as_rpc_error() from None
            log.warning("%s: %s", self.name, err)
            for name, placement in placements.items():
                old = self.sessions.get(name)
                if placement.path is not None and (old is None or old.path != placement.path):
                    placements[name] = Placement(placement.request, None, "failed", f"installation failed: {err}")
        else:
            for link in edits:
                self.kms[link].config = wanted[link]
        await self._adopt(placements, view)

    async def _place(self, requests: dict[str, SessionConfig], view: ForwardingView | None,
                     unavailable: str) -> dict[str, Placement]:
        """Where each session goes: sound placements stay where they are (no flapping); new,
        changed and failed sessions, and those whose path broke, are planned around the rest.
        Without a view of the forwarding topology nothing moves and nothing new is placed."""
        reachable = set(self._reachable())
        placements: dict[str, Placement] = {}
        replan: dict[str, str] = {}   # session -> why its path is no longer sound ('' for new ones)
        for name, request in sorted(requests.items()):
            old = self.sessions.get(name)
            if old is None or old.request != request or old.path is None:
                replan[name] = ""
            elif old.status == "expired" or view is None:
                placements[name] = old
            elif problem := self._path_problem(old.path, request, view, reachable):
                replan[name] = problem
                await self._set_status(name, old, "degraded", f"{problem}; re-planning")
            else:
                placements[name] = old
        if view is None:
            placements.update({name: Placement(requests[name], None, "failed", unavailable) for name in replan})
            return placements
        planner = Planner(view, reachable, self.alarms)
        for name, kept in placements.items():
            if kept.path is not None and kept.status != "expired":
                planner.hold(name, kept.path, kept.request.rate)
        for name, why in replan.items():
            request = requests[name]
            try:
                path = planner.plan(request, *self._kms_of(request, view))[0]
            except NoPath as err:
                placements[name] = Placement(request, None, "failed",
                                             f"{why}; no other path: {err}" if why else str(err))
                continue
            planner.hold(name, path, request.rate)
            where = f"over {path} on {len(path.kms)} key managers"
            placements[name] = Placement(request, path, "active",
                                         f"re-planned {where}: {why}" if why else f"installed {where}")
        return placements

    async def _adopt(self, placements: dict[str, Placement], view: ForwardingView | None) -> None:
        """Take the new placements, telling subscribers of every status change."""
        previous, self.sessions = self.sessions, placements
        self.counted_at = {name: _counted_at(p.path, p.request) if p.path else self.counted_at[name]
                           for name, p in placements.items() if p.path or name in self.counted_at}
        for name, placement in placements.items():
            old = previous.get(name)
            if old is not None and old is not placement and (old.status, old.path) == (placement.status, placement.path):
                placement.since = old.since
            elif old is not placement:
                await self._notify(name, placement.status, old.status if old else None, placement.reason)
        loads = _link_loads(placements)
        for name, placement in placements.items():
            if view is None or placement.path is None or placement.status not in ("active", "degraded"):
                continue
            short = self._rate_problem(placement.path, loads, view)
            if short:
                await self._set_status(name, placement, "degraded", short)
            elif placement.status == "degraded":
                await self._set_status(name, placement, "active", "the key rate is back on every link of the path")

    def _path_problem(self, path: Path, request: SessionConfig, view: ForwardingView, reachable: set[str]) -> str:
        """Why a placed path is no longer sound, or ''."""
        for link_id in path.link_ids:
            link = view.links.get(link_id)
            if link is None:
                return f"link {link_id} is gone from the forwarding topology"
            if link.status != "ACTIVE":
                why = self.link_reasons.get(link.id)
                return f"link {link.id} is {link.status}" + (f" ({why})" if why else "")
            if link.id in self.alarms:
                return f"link {link.id} has a QBER alarm ({self.alarms[link.id]})"
            if request.qber_ceiling is not None and (link.qber is None or link.qber > request.qber_ceiling):
                return f"link {link.id} has QBER {link.qber}%, above the ceiling of {request.qber_ceiling}%"
        down = [km for node, km in zip(path.nodes, path.kms) if not view.is_external(node) and km not in reachable]
        return f"key manager {down[0]} is unreachable" if down else ""

    @staticmethod
    def _rate_problem(path: Path, loads: dict[str, int], view: ForwardingView) -> str:
        """A link of the path whose eskr no longer covers the sessions placed on it (`loads`:
        link -> the rates of the sessions placed on it), or ''."""
        for link_id in path.link_ids:
            load = loads.get(link_id, 0)
            eskr = view.links[link_id].eskr if link_id in view.links else 0
            if eskr < load:
                return f"link {link_id}: eskr {eskr} b/s, below the {load} b/s of its sessions"
        return ""

    def _reachable(self) -> dict[str, str]:
        """The key managers connected and read: km-id -> device name."""
        return {v.km_id: name for name, v in self.kms.items() if self.links[name].connected.is_set()}

    def _kms_of(self, request: SessionConfig, view: ForwardingView) -> tuple[str, str]:
        """The key managers at the two ends of the session's path: its SAEs', or for a segment
        the far end of the inter-domain link where keys enter or leave the domain."""
        directory = self.sae_directory()
        segment = request.segment
        border_links = (segment.ingress_link, segment.egress_link) if segment else (None, None)
        sae_kms = (segment.source_km, segment.destination_km) if segment else (None, None)
        kms = []
        for sae, border_link, sae_km in zip((request.source_sae, request.destination_sae), border_links, sae_kms):
            if border_link is not None:
                link = view.links.get(border_link)
                far = next((n for n in link.nodes() if view.is_external(n)), None) if link else None
                if far is None:
                    raise NoPath(f"{border_link} is not an inter-domain link of the forwarding topology")
                kms.append(view.km_of(far) or "")
            elif sae not in directory:
                raise NoPath(f"SAE {sae} is not attached to any key manager")
            elif sae_km is not None and directory[sae] != sae_km:
                raise NoPath(f"SAE {sae} is attached to key manager {directory[sae]}, not to {sae_km} as the "
                             f"segment says")
            else:
                kms.append(directory[sae])
        return kms[0], kms[1]

    def sae_directory(self) -> dict[str, str]:
        return {sae: view.km_id for view in self.kms.values() for sae in view.saes}

    def _wanted(self, placements: dict[str, Placement], view: ForwardingView | None) -> dict[str, KmConfig]:
        """The configuration every reachable key manager should have, by device name."""
        link_of = self._reachable()
        wanted = {name: KmConfig(dict(self.kms[name].config.pools)) for name in link_of.values()}
        for link in (view.links.values() if view else ()):
            (a, a_far), (b, b_far) = ((view.km_of(n), view.is_external(n)) for n in link.nodes())
            if a != b and (a in link_of or a_far) and (b in link_of or b_far):  # an inter-domain link: its local end
                for km, peer in ((a, b), (b, a)):
                    if km in link_of:
                        wanted[link_of[km]].pools[link.qkdl_id] = peer
        for name, placement in placements.items():
            path, request = placement.path, placement.request
            if path is None:
                continue
            if placement.status != "expired":   # an expired session keeps its entries, not its routes
                for km, destination, next_hop, via in path.routes():
                    if km in link_of:
                        wanted[link_of[km]].routes[destination] = (next_hop, via)
            source, destination = path.ends
            for km, peer in ((source, destination), (destination, source)):
                if km in link_of:
                    wanted[link_of[km]].sessions[name] = KmSession(
                        request.source_sae, request.destination_sae, peer, request.rate, request.burst,
                        request.key_size, request.ttl)
        for name, want in wanted.items():
            # Each key manager reaches the peers of its pools where they say they are; peers whose
            # address this controller does not know (another domain's) are left as configured.
            want.peers = {km: url for km, url in self.kms[name].config.peers.items() if km not in self.km_urls}
            want.peers.update({peer: self.km_urls[peer] for peer in set(want.pools.values()) if peer in self.km_urls})
        return wanted

    async def _read_forwarding(self) -> ForwardingView:
        """The forwarding topology, and the QBER alarms raised now (from its alarm list)."""
        nc = await self.forwarding.session(FORWARDING_TIMEOUT_S)
        data = await nc.get(filter=("subtree", FORWARDING_FILTER))
        km_by_site = {v.site: v.km_id for v in self.kms.values() if v.site}
        self.alarms = raised_link_alarms(read_alarms(data))
        return ForwardingView.parse(data).key_paths(km_by_site)

    async def _set_status(self, name: str, placement: Placement, status: str, reason: str) -> None:
        """A new reason, and a new status told to subscribers when it is one."""
        previous, placement.reason = placement.status, reason
        if status != previous:
            placement.status, placement.since = status, now()
            await self._notify(name, status, previous, reason)

    async def _notify(self, name: str, status: str, previous: str | None, reason: str) -> None:
        change = session_status_change(name, status, previous, reason, now().isoformat())
        log.info("%s: session %s %s: %s", self.name, name, status, reason)
        await self.server.notify(change)

    # --- northbound: state and plan-path ---------------------------------------------------------

    async def state(self, flt: etree._Element | None = None) -> etree._Element | None:
        """The sessions and the SAE directory; the sessions `flt` cannot select are left out,
        and the delivered counters are read from their key managers only (the orchestrator
        reads back one session after each edit: reading every key manager for it made 1,000
        intents cost 100,000 reads, and building every session for it took longer than the edit)."""
        selected = sessions_selected(flt)
        counters = await self._delivered(selected)
        placements = self.sessions if selected is None else \
            {name: self.sessions[name] for name in selected if name in self.sessions}
        sessions = {name: Session(name, p.request.source_sae, p.request.destination_sae, p.request.rate, p.status,
                                  p.reason, _hops(p.path) if p.path is not None else (), *counters.get(name, (0, 0)),
                                  since=p.since.isoformat())
                    for name, p in placements.items()}
        # The directory is listed once every key manager has been read: a partial directory
        # would tell the levels above that the SAEs of the others are attached nowhere.
        view = ServiceView(sessions, self.sae_directory() if self.synced.is_set() else {})
        return view.state(self._built if selected is None else None)

    async def _delivered(self, names: set[str] | None = None) -> dict[str, tuple[int, int]]:
        """Keys and bits delivered per session (of `names`; None: every session), as the source
        SAE's key manager counts them (for a segment, see the module's docstring)."""
        link_of = self._reachable()
        wanted: dict[str, list[tuple[str, str]]] = {}  # device -> (session, counter)
        for name, (km, counter) in self.counted_at.items():
            if km in link_of and (names is None or name in names):
                wanted.setdefault(link_of[km], []).append((name, counter))

        async def read(link_name: str) -> dict[str, tuple[int, int]]:
            nc = await self.links[link_name].session(STATE_TIMEOUT_S)
            async with asyncio.timeout(STATE_TIMEOUT_S):
                data = await nc.get(filter=("subtree", COUNTERS_FILTER))
            counts = KmCounters.parse(data)
            out = {}
            for name, counter in wanted[link_name]:
                placement = self.sessions.get(name)  # gone if deleted while the key manager answered
                if placement is None:
                    continue
                count = counts.count(counter, name, (placement.request.source_sae, placement.request.destination_sae))
                if count is not None:
                    out[name] = count
            return out

        counters: dict[str, tuple[int, int]] = {}
        for result in await asyncio.gather(*(read(n) for n in wanted), return_exceptions=True):
            if isinstance(result, dict):
                counters.update(result)
        return counters

    async def _plan_path(self, session, operation: etree._Element, context) -> list[etree._Element]:
        request = SessionConfig.parse(operation)
        count = int(SERVICE.text(operation, "path-count") or 1)
        async with self._lock:
            try:
                view = await self._read_forwarding()
                if SERVICE.text(operation, "include-buildable") == "true":
                    await self._add_buildable(view)
            except (RPCError, OSError, asyncio.TimeoutError) as err:
                raise RPCError("operation-failed", f"the forwarding topology is unavailable: {err}") from None
            planner = Planner(view, set(self._reachable()), self.alarms)
            for name, placement in self.sessions.items():
                if placement.path is not None and placement.status != "expired":
                    planner.hold(name, placement.path, placement.request.rate)
            try:
                paths = planner.plan(request, *self._kms_of(request, view), count=count)
            except NoPath as err:
                raise RPCError("operation-failed", str(err)[:REASON_LENGTH]) from None
        out = []
        for index, path in enumerate(paths):
            entry = SERVICE.element("path")
            SERVICE.sub(entry, "index", index)
            SERVICE.sub(entry, "headroom", max(0, path.headroom))
            append_hops(entry, _hops(path))
            for link_id in path.link_ids:
                if view.links[link_id].buildable:
                    SERVICE.sub(entry, "buildable-link", link_id)
            out.append(entry)
        return out

    async def _add_buildable(self, view: ForwardingView) -> None:
        """Add the PHYS links that could be built (controller.buildable) to `view`, from the
        forwarding topology and the connectivity controller's fibre network."""
        if self.connectivity is None:
            raise RPCError("operation-failed", "include-buildable: this service controller reads no connectivity "
                                               "controller, so it cannot tell which links could be built")
        networks = ("subtree", NETWORKS_FILTER)
        forwarding = await (await self.forwarding.session(FORWARDING_TIMEOUT_S)).get(filter=networks)
        endpoint = self.connectivity
        async with asyncio.timeout(FORWARDING_TIMEOUT_S):
            async with await endpoint.connect() as nc:
                fibre = await nc.get(filter=networks)
        for link in buildable_links(forwarding, fibre):
            if link.link_id not in view.links and all(n in view.nodes for n in link.ends):
                view.links[link.link_id] = QkdLink(link.link_id, (link.ends[0], ""), (link.ends[1], ""), "", "PHYS",
                                                   "BUILDABLE", None, link.eskr, link.qber, None, buildable=True)


def _link_loads(placements: dict[str, Placement]) -> dict[str, int]:
    """link -> the rates of the sessions placed on it (expired ones aside), summed once for all
    the sessions a reconcile checks (summing them for each session made it quadratic)."""
    loads: dict[str, int] = {}
    for placement in placements.values():
        if placement.path is not None and placement.status != "expired":
            for link_id in set(placement.path.link_ids):
                loads[link_id] = loads.get(link_id, 0) + placement.request.rate
    return loads


def _counted_at(path: Path, request: SessionConfig) -> tuple[str, str]:
    """The key manager, and its counter, of a session's delivered keys (see the docstring)."""
    segment = request.segment
    if segment is None:
        return path.kms[0], "delivered"
    if segment.ingress_link is None:
        return path.kms[0], "forwarded"
    return (path.kms[-1], "received") if segment.egress_link is None else (path.kms[-2], "forwarded")


def _hops(path: Path) -> tuple[Hop, ...]:
    """The key-path hops of a path."""
    links = path.link_ids + (None,)
    return tuple(Hop(km, node, link) for node, km, link in zip(path.nodes, path.kms, links))
