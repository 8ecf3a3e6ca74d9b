"""The service controller: key-delivery sessions between SAEs (qi-service, northbound) over
the key managers (qi-key-manager, southbound), planned over the QKD topology that the
forwarding controller serves (qi-forwarding, read as any NETCONF client would).

How a session becomes keys:

1. its two SAEs are looked up in the SAE directory (the key managers' SAE lists);
2. a path of QKD nodes is planned over the forwarding topology: ACTIVE PHYS links without a
   QBER alarm, within the session's constraints, each with eskr headroom for the session's
   rate after the rates of the other sessions on it;
3. every key manager on the path gets routes towards both end key managers, and the two end
   key managers the application session with its token bucket, in one transaction.

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
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import networkx as nx
from lxml import etree

from controller.alarms import AL, resource_link
from controller.base import Controller
from controller.buildable import buildable_links
from netconf_core import ReconcileLoop
from netconf_core.client import NetconfClient
from netconf_core.errors import BASE_NS, RPCError
from netconf_core.link import DeviceLink, Endpoint, TransactionError
from netconf_core.notifications import now
from netconf_core.server import User

log = logging.getLogger(__name__)

SVC = "urn:qstrata:yang:qi-service"
KM = "urn:qstrata:yang:qi-key-manager"
NW = "urn:ietf:params:xml:ns:yang:ietf-network"
NT = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
FWD = "urn:qstrata:yang:qi-forwarding"
OPERATION = f"{{{BASE_NS}}}operation"

DEFAULT_KEY_SIZE = 256
MIN_BURST_BITS = 262_144          # the qi-key-manager default token bucket
MAX_CANDIDATE_PATHS = 32          # simple paths tried per session when routes conflict
MAX_LISTED = 6                    # culprits named in one reason
REASON_LENGTH = 1024              # qit:reason
FORWARDING_TIMEOUT_S = 5.0        # wait for the forwarding controller's session
STATE_TIMEOUT_S = 2.0             # per key manager, when a <get> asks for delivered keys


def _find(element: etree._Element | None, ns: str, path: str) -> str | None:
    """Stripped text of the descendant at `path` ('a/b', every step in namespace `ns`)."""
    if element is None:
        return None
    value = element.findtext("/".join(f"{{{ns}}}{step}" for step in path.split("/")))
    return value.strip() if value is not None else None


def _all(element: etree._Element, ns: str, path: str) -> list[etree._Element]:
    return element.findall("/".join(f"{{{ns}}}{step}" for step in path.split("/")))


def _sub(parent: etree._Element, ns: str, tag: str, text: object = None) -> etree._Element:
    child = etree.SubElement(parent, f"{{{ns}}}{tag}")
    if text is not None:
        child.text = str(text)
    return child


def _identity(value: str | None) -> str:
    """An identityref's name without its prefix."""
    return (value or "").rsplit(":", 1)[-1]


def qber_alarms(data: etree._Element | None) -> dict[str, str]:
    """Link id -> alarm text of the QBER alarms raised now in a forwarding controller's alarm list."""
    out = {}
    for alarm in _all(data, AL, "alarms/alarm-list/alarm") if data is not None else []:
        if _identity(_find(alarm, AL, "alarm-type-id")) == "qber-above-threshold" \
                and _find(alarm, AL, "is-cleared") == "false":
            link_id = resource_link(_find(alarm, AL, "resource") or "")
            out[link_id] = _find(alarm, AL, "alarm-text") or "QBER above the threshold"
    return out


def _listed(items: list[str]) -> str:
    unique = list(dict.fromkeys(items))
    more = len(unique) - MAX_LISTED
    return ", ".join(unique[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


# -- the forwarding topology, as the planner sees it ------------------------------------------

@dataclass(frozen=True)
class QkdNode:
    node_id: str
    km_id: str | None
    site: str | None
    external: bool = False  # another member domain's border node, at the far end of an inter-domain link


@dataclass(frozen=True)
class QkdLink:
    """A PHYS key-association link (one link for both directions)."""

    link_id: str
    qkdl_id: str
    ends: tuple[str, str]     # node ids
    status: str               # ETSI link status: ACTIVE, PASSIVE, PENDING, OFF
    eskr: int                 # bit/s
    qber: float | None        # percent
    buildable: bool = False   # not there yet: the forwarding stratum could build it (plan-path only)


@dataclass
class ForwardingView:
    nodes: dict[str, QkdNode]
    links: dict[str, QkdLink]

    @classmethod
    def from_xml(cls, data: etree._Element | None, km_by_site: dict[str, str]) -> ForwardingView:
        """The QKD networks of a qi-forwarding <data> tree. A node without a km-id gets the key
        manager of its site."""
        nodes: dict[str, QkdNode] = {}
        links: dict[str, QkdLink] = {}
        networks = data.iter(f"{{{NW}}}network") if data is not None else []
        for network in networks:
            if network.find(f"{{{NW}}}network-types/{{{FWD}}}qkd-network") is None:
                continue
            for node in network.iterfind(f"{{{NW}}}node"):
                node_id = _find(node, NW, "node-id") or ""
                qkd = node.find(f"{{{FWD}}}qkd-node")
                site = _find(qkd, FWD, "site")
                nodes[node_id] = QkdNode(node_id, _find(qkd, FWD, "km-id") or km_by_site.get(site or ""), site)
            for link in network.iterfind(f"{{{NT}}}link"):
                qkd = link.find(f"{{{FWD}}}qkd-link")
                if qkd is None or _identity(_find(qkd, FWD, "link-type")) != "PHYS":
                    continue
                link_id = _find(link, NT, "link-id") or ""
                qber = _find(qkd, FWD, "qber")
                ends = (_find(link, NT, "source/source-node") or "", _find(link, NT, "destination/dest-node") or "")
                links[link_id] = QkdLink(
                    link_id, _find(qkd, FWD, "qkdl-id") or "", ends,
                    _identity(_find(qkd, FWD, "status")) or "OFF", int(_find(qkd, FWD, "eskr") or 0),
                    float(qber) if qber is not None else None)
                peer = qkd.find(f"{{{FWD}}}external-peer")
                if peer is not None:
                    nodes[ends[1]] = QkdNode(ends[1], _find(peer, FWD, "km-id"), None, external=True)
        return cls(nodes, links)

    def km(self, node_id: str) -> str | None:
        node = self.nodes.get(node_id)
        return node.km_id if node else None

    def is_external(self, node_id: str) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.external

    def node_of_km(self, km_id: str) -> str | None:
        return next((n.node_id for n in self.nodes.values() if n.km_id == km_id), None)


# -- what a session asks for, and where it goes ------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """Where a segment session enters and leaves the domain, and the key managers of its SAEs."""

    source_km: str
    destination_km: str
    ingress_link: str | None
    egress_link: str | None

    @classmethod
    def from_xml(cls, element: etree._Element | None) -> Segment | None:
        if element is None:
            return None
        return cls(_find(element, SVC, "source-km") or "", _find(element, SVC, "destination-km") or "",
                   _find(element, SVC, "ingress-link"), _find(element, SVC, "egress-link"))


@dataclass(frozen=True)
class Request:
    source_sae: str
    destination_sae: str
    rate: int
    key_size: int = DEFAULT_KEY_SIZE
    ttl: int | None = None
    max_hops: int | None = None
    avoid_nodes: frozenset[str] = frozenset()
    avoid_links: frozenset[str] = frozenset()
    qber_ceiling: float | None = None
    segment: Segment | None = None

    @classmethod
    def from_xml(cls, element: etree._Element) -> Request:
        """From a qi-service session entry or plan-path input (already validated by the engine)."""
        def number(tag: str, cast: Callable = int):
            value = _find(element, SVC, tag)
            return cast(value) if value is not None else None

        return cls(_find(element, SVC, "source-sae") or "", _find(element, SVC, "destination-sae") or "",
                   number("rate") or 0, number("key-size") or DEFAULT_KEY_SIZE, number("ttl"), number("max-hops"),
                   frozenset((e.text or "").strip() for e in _all(element, SVC, "avoid-nodes")),
                   frozenset((e.text or "").strip() for e in _all(element, SVC, "avoid-links")),
                   number("qber-ceiling", float), Segment.from_xml(element.find(f"{{{SVC}}}segment")))

    @property
    def border_links(self) -> frozenset[str]:
        """The inter-domain links a segment may use; no other session uses any."""
        segment = self.segment
        return frozenset(l for l in (segment.ingress_link, segment.egress_link) if l) if segment else frozenset()

    @property
    def burst(self) -> int:
        """Token bucket size: one second of the rate, at least the model's default bucket."""
        return max(MIN_BURST_BITS, self.rate, self.key_size)


@dataclass(frozen=True)
class Path:
    """A route through the QKD network; two paths are equal when they take the same links
    towards the same key managers. `ends` are the key managers the keys travel between: the
    path's ends, or for a segment the key managers of the service's SAEs."""

    nodes: tuple[str, ...]
    kms: tuple[str, ...]
    link_ids: tuple[str, ...]
    qkdl_ids: tuple[str, ...]
    ends: tuple[str, str]
    headroom: int = field(default=0, compare=False)   # smallest spare eskr, before this session's rate

    def routes(self) -> list[tuple[str, str, str, str]]:
        """(key manager, destination key manager, next hop, via qkdl-id), both ways."""
        source, destination = self.ends
        out = []
        for i, qkdl_id in enumerate(self.qkdl_ids):
            out.append((self.kms[i], destination, self.kms[i + 1], qkdl_id))
            out.append((self.kms[i + 1], source, self.kms[i], qkdl_id))
        return out

    def __str__(self) -> str:
        return " - ".join(self.nodes)


class NoPath(Exception):
    """No path meets the request; the message names what is missing."""


Claims = dict[tuple[str, str], tuple[str, str, str]]  # (km, destination) -> (next hop, via, session)


class Planner:
    """Paths over one observed topology, around what the placed sessions already hold."""

    def __init__(self, view: ForwardingView, reachable_kms: set[str], alarms: dict[str, str]):
        self.view = view
        self.reachable_kms = reachable_kms
        self.alarms = alarms
        self.reserved: dict[str, int] = {}   # link id -> rate of the placed sessions
        self.claims: Claims = {}

    def hold(self, name: str, path: Path, rate: int) -> None:
        """A placed session: its rate on every link of its path, and its routes."""
        for link_id in path.link_ids:
            self.reserved[link_id] = self.reserved.get(link_id, 0) + rate
        for km, destination, next_hop, via in path.routes():
            self.claims[(km, destination)] = (next_hop, via, name)

    def headroom(self, link: QkdLink) -> int:
        return link.eskr - self.reserved.get(link.link_id, 0)

    def plan(self, request: Request, source_km: str, destination_km: str, count: int = 1) -> list[Path]:
        """Up to `count` node-disjoint paths, best first; NoPath says why there are fewer."""
        ends = []
        for km in (source_km, destination_km):
            node = self.view.node_of_km(km)
            if node is None:
                raise NoPath(f"key manager {km} has no QKD node in the forwarding topology")
            ends.append(node)
        source, destination = ends
        if source == destination:  # both SAEs on one key manager: it delivers the keys itself
            return [Path((source,), (source_km,), (), (), (source_km, destination_km), headroom=request.rate)]
        paths: list[Path] = []
        taken_nodes: set[str] = set()                  # inner nodes of the paths found so far
        taken_edges: set[frozenset[str]] = set()       # direct source-destination link, if used
        while len(paths) < count:
            try:
                graph = self._usable_graph(request, source, destination, taken_nodes, taken_edges)
                path = self._first_fitting(graph, source, destination, request)
            except NoPath as err:
                if not paths:
                    raise
                raise NoPath(f"only {len(paths)} node-disjoint path(s) between {source} and {destination}, "
                             f"{count} asked: {err}") from None
            paths.append(path)
            taken_nodes.update(path.nodes[1:-1])
            if len(path.nodes) == 2:
                taken_edges.add(frozenset(path.nodes))
        return paths

    def _graph(self, keep: Callable[[QkdLink], bool], taken_nodes: set[str],
               taken_edges: set[frozenset[str]]) -> nx.Graph:
        """Nodes joined by their kept links; of parallel links, the one with most headroom.
        Nodes and node pairs already taken by another path are left out."""
        graph = nx.Graph()
        graph.add_nodes_from(n for n in self.view.nodes if n not in taken_nodes)
        for link in self.view.links.values():
            a, b = link.ends
            if (a == b or not graph.has_node(a) or not graph.has_node(b) or frozenset(link.ends) in taken_edges
                    or not keep(link)):
                continue
            current = graph.get_edge_data(a, b)
            if current is None or self.headroom(link) > current["headroom"]:
                graph.add_edge(a, b, link=link, headroom=self.headroom(link))
        return graph

    def _usable_graph(self, request: Request, source: str, destination: str, taken_nodes: set[str],
                      taken_edges: set[frozenset[str]]) -> nx.Graph:
        """The links the request may use; NoPath names the first filter that cuts the two ends apart."""
        view, ceiling = self.view, request.qber_ceiling
        kms = lambda link: [view.km(n) or f"{n} (no key manager)" for n in link.ends if not view.is_external(n)]
        filters: list[tuple[str, Callable[[QkdLink], bool], Callable[[QkdLink], list[str]]]] = [
            ("a node whose key manager is unreachable",
             lambda l: all(km in self.reachable_kms for km in kms(l)),
             lambda l: [km for km in kms(l) if km not in self.reachable_kms]),
            ("a QKD link that is not ACTIVE",
             lambda l: l.status == "ACTIVE" or l.buildable, lambda l: [f"{l.link_id} ({l.status})"]),
            ("a QKD link with a raised QBER alarm",
             lambda l: l.link_id not in self.alarms, lambda l: [f"{l.link_id} ({self.alarms[l.link_id]})"]),
            ("a node or link the request avoids",
             lambda l: l.link_id not in request.avoid_links and not set(l.ends) & request.avoid_nodes,
             lambda l: [l.link_id] if l.link_id in request.avoid_links else sorted(set(l.ends) & request.avoid_nodes)),
            (f"a QKD link above the QBER ceiling of {ceiling}%",
             lambda l: ceiling is None or (l.qber is not None and l.qber <= ceiling),
             lambda l: [f"{l.link_id} (QBER {'unknown' if l.qber is None else f'{l.qber}%'})"]),
        ]
        # Inter-domain links only for the segments that name them.
        may_use = lambda l: l.link_id in request.border_links or not any(view.is_external(n) for n in l.ends)
        kept: list[Callable[[QkdLink], bool]] = [may_use]
        graph_of = lambda keep: self._graph(keep, taken_nodes, taken_edges)
        graph = graph_of(may_use)
        if not nx.has_path(graph, source, destination):
            raise NoPath(f"no chain of PHYS QKD links joins {source} and {destination} in the forwarding topology")
        for what, keep, culprits in filters:
            reachable = nx.node_connected_component(graph, source)
            kept.append(keep)
            graph = graph_of(lambda l: all(k(l) for k in kept))
            if not nx.has_path(graph, source, destination):
                named = [c for l in self.view.links.values()
                         if set(l.ends) <= reachable and all(k(l) for k in kept[:-1]) and not keep(l)
                         for c in culprits(l)]
                raise NoPath(f"every chain of QKD links between {source} and {destination} crosses {what}: "
                             f"{_listed(named)}")
        wide = graph_of(lambda l: all(k(l) for k in kept) and self.headroom(l) >= request.rate)
        if not nx.has_path(wide, source, destination):
            raise NoPath(self._short_of_rate(graph, source, destination, request.rate))
        return wide

    def _short_of_rate(self, graph: nx.Graph, source: str, destination: str, rate: int) -> str:
        """Name the bottleneck of the widest path (the path in a maximum spanning tree)."""
        tree = nx.maximum_spanning_tree(graph, weight="headroom")
        nodes = nx.shortest_path(tree, source, destination)
        bottleneck = min((tree.edges[a, b]["link"] for a, b in zip(nodes, nodes[1:])), key=self.headroom)
        taken = self.reserved.get(bottleneck.link_id, 0)
        return (f"not enough effective key rate between {source} and {destination}: {rate} b/s requested, "
                f"the widest path {' - '.join(nodes)} can spare {max(0, self.headroom(bottleneck))} b/s on link "
                f"{bottleneck.link_id} (eskr {bottleneck.eskr} b/s, {taken} b/s taken by other sessions)")

    def _first_fitting(self, graph: nx.Graph, source: str, destination: str, request: Request) -> Path:
        """The fewest-hop path within max-hops that changes no route another session uses."""
        conflict = ""
        for i, nodes in enumerate(nx.shortest_simple_paths(graph, source, destination)):
            hops = len(nodes) - 1
            if request.max_hops is not None and hops > request.max_hops:
                if i == 0:
                    raise NoPath(f"the shortest path between {source} and {destination} with enough key rate has "
                                 f"{hops} hops, more than max-hops {request.max_hops}")
                break
            if i == MAX_CANDIDATE_PATHS:
                break
            links = [graph.edges[a, b]["link"] for a, b in zip(nodes, nodes[1:])]
            kms = tuple(self.view.km(n) or "" for n in nodes)
            ends = (request.segment.source_km, request.segment.destination_km) if request.segment else (kms[0], kms[-1])
            path = Path(tuple(nodes), kms, tuple(l.link_id for l in links), tuple(l.qkdl_id for l in links), ends,
                        min(self.headroom(l) for l in links))
            conflict = self._conflict(path)
            if not conflict:
                return path
        raise NoPath(f"every path between {source} and {destination} within the constraints would change a "
                     f"route that another session uses: {conflict}")

    def _conflict(self, path: Path) -> str:
        for km, destination, next_hop, via in path.routes():
            claim = self.claims.get((km, destination))
            if claim is not None and claim[:2] != (next_hop, via):
                return (f"key manager {km} relays keys for {destination} via {claim[0]} (link {claim[1]}) "
                        f"for session {claim[2]}")
        return ""


# -- key managers ----------------------------------------------------------------------------

@dataclass(frozen=True)
class KmSession:
    master_sae: str
    slave_sae: str
    peer_km: str
    rate: int
    burst: int
    key_size: int
    ttl: int | None


@dataclass
class KmConfig:
    """What the controller manages on one key manager."""

    pools: dict[str, str] = field(default_factory=dict)                   # qkdl-id -> peer km
    routes: dict[str, tuple[str, str]] = field(default_factory=dict)      # destination -> (next hop, via)
    sessions: dict[str, KmSession] = field(default_factory=dict)


@dataclass
class KmView:
    """A key manager as last read (or written) by the controller."""

    km_id: str
    site: str | None
    saes: frozenset[str]
    config: KmConfig

    @classmethod
    def from_xml(cls, root: etree._Element) -> KmView:
        """From a <key-manager> element (qi-key-manager configuration)."""
        text = lambda el, path: _find(el, KM, path) or ""
        pools = {text(p, "link-id"): text(p, "peer-km-id") for p in _all(root, KM, "key-pools/key-pool")}
        routes = {text(r, "destination-km-id"): (text(r, "next-hop-km-id"), text(r, "via-link-id"))
                  for r in _all(root, KM, "forwarding-table/route")}
        sessions = {}
        for s in _all(root, KM, "sessions/session"):
            ttl = _find(s, KM, "qos/ttl")
            sessions[text(s, "session-id")] = KmSession(
                text(s, "master-sae-id"), text(s, "slave-sae-id"), text(s, "peer-km-id"),
                int(text(s, "qos/rate") or 0), int(_find(s, KM, "qos/burst") or MIN_BURST_BITS),
                int(_find(s, KM, "qos/key-size") or DEFAULT_KEY_SIZE), int(ttl) if ttl else None)
        saes = frozenset(text(s, "sae-id") for s in _all(root, KM, "saes/sae"))
        return cls(text(root, "km-id"), _find(root, KM, "site"), saes, KmConfig(pools, routes, sessions))


def km_edit(have: KmConfig, want: KmConfig) -> etree._Element | None:
    """The edit-config <key-manager> that turns `have` into `want`; None when equal. Pools are
    only added or changed, never removed: they hold key."""
    root = etree.Element(f"{{{KM}}}key-manager", nsmap={None: KM})
    pools = [(link, peer) for link, peer in want.pools.items() if have.pools.get(link) != peer]
    if pools:
        container = _sub(root, KM, "key-pools")
        for link, peer in pools:
            pool = _sub(container, KM, "key-pool")
            _sub(pool, KM, "link-id", link)
            _sub(pool, KM, "peer-km-id", peer)
    _replace_changed(root, "forwarding-table", "route", "destination-km-id", have.routes, want.routes, _route_leaves)
    _replace_changed(root, "sessions", "session", "session-id", have.sessions, want.sessions, _session_leaves)
    return root if len(root) else None


def _replace_changed(root: etree._Element, container: str, entry: str, key: str, have: dict, want: dict,
                     leaves: Callable[[etree._Element, Any], None]) -> None:
    """Under `container`, the entries of a keyed list whose value differs between `have` and
    `want`: replaced by `want`'s (its `leaves` written), or removed when `want` has none."""
    changed = [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    if not changed:
        return
    parent = _sub(root, KM, container)
    for name in changed:
        element = _sub(parent, KM, entry)
        _sub(element, KM, key, name)
        if name in want:
            element.set(OPERATION, "replace")
            leaves(element, want[name])
        else:
            element.set(OPERATION, "remove")


def _route_leaves(route: etree._Element, hop: tuple[str, str]) -> None:
    next_hop, via = hop
    _sub(route, KM, "next-hop-km-id", next_hop)
    _sub(route, KM, "via-link-id", via)


def _session_leaves(entry: etree._Element, s: KmSession) -> None:
    _sub(entry, KM, "master-sae-id", s.master_sae)
    _sub(entry, KM, "slave-sae-id", s.slave_sae)
    _sub(entry, KM, "peer-km-id", s.peer_km)
    qos = _sub(entry, KM, "qos")
    _sub(qos, KM, "rate", s.rate)
    _sub(qos, KM, "burst", s.burst)
    _sub(qos, KM, "key-size", s.key_size)
    if s.ttl is not None:
        _sub(qos, KM, "ttl", s.ttl)


# -- the controller ----------------------------------------------------------------------------

@dataclass
class Placement:
    request: Request
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

    def __init__(self, name: str, devices: list[Endpoint], forwarding: Endpoint, users: dict[str, User], *,
                 connectivity: Endpoint | None = None, **kw):
        """`connectivity`, when given, is read by plan-path for the links that could be built."""
        super().__init__(name, devices, users, **kw)
        self.connectivity = connectivity
        self.forwarding = DeviceLink(forwarding, ("qi-forwarding",), self._forwarding_connected,
                                     self._forwarding_notification)
        self.kms: dict[str, KmView] = {}            # by device (link) name
        self.sessions: dict[str, Placement] = {}    # by session name
        self.counted_at: dict[str, tuple[str, str]] = {}  # session -> (km, counter) of its last path
        self.alarms: dict[str, str] = {}            # forwarding link id -> its raised QBER alarm, as last read
        self.link_reasons: dict[str, str] = {}      # forwarding link id -> why its status last changed
        self.synced = asyncio.Event()               # every key manager's configuration has been read
        self._lock = asyncio.Lock()                 # one reconcile (or plan) at a time
        self._wakes = 0                             # wake-ups asked so far
        self._seen = 0                              # ... that the last reconcile started after
        # No retry of a failed pass: the next wake-up tries again.
        self._loop = ReconcileLoop(name, self._reconcile_pass, backoff_initial=None, logger=log)
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
        change = notification.find(f"{{{KM}}}session-state-change")
        if change is None or _find(change, KM, "status") != "expired":
            return
        name = _find(change, KM, "session-id") or ""
        async with self._lock:
            placement = self.sessions.get(name)
            if placement is not None and placement.status != "expired":
                await self._set_status(name, placement, "expired",
                                       _find(change, KM, "reason") or "the session's time to live has passed")

    async def resync(self) -> None:
        """Re-read every key manager (what drifted from what was written is rewritten) and reconcile."""
        async with self._lock:
            await asyncio.gather(*(self._read_km(link) for link in self.links.values() if link.connected.is_set()),
                                 return_exceptions=True)
            await self._reconcile_config()

    async def _read_km(self, link: DeviceLink) -> None:
        nc = await link.session()
        data = await nc.get_config(filter=("subtree", f'<key-manager xmlns="{KM}"/>'))
        root = data.find(f"{{{KM}}}key-manager") if data is not None else None
        if root is None:
            log.warning("%s: device %s has no key-manager configuration", self.name, link.name)
            return
        view = KmView.from_xml(root)
        previous = self.kms.get(link.name)
        if previous is not None and previous.config != view.config:
            log.warning("%s: key manager %s differs from what was written; repairing", self.name, view.km_id)
        self.kms[link.name] = view

    async def _forwarding_connected(self, link: DeviceLink) -> None:
        self.wake()

    async def _forwarding_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        """A link's status or an alarm changed: reconcile (which reads the alarm list afresh)."""
        status = notification.find(f"{{{FWD}}}link-status-change")
        if status is not None:
            link_id = _find(status, FWD, "link-id") or ""
            self.link_reasons[link_id] = _find(status, FWD, "reason") or ""
        elif notification.find(f"{{{AL}}}alarm-notification") is None:
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
    def _requests(config: etree._Element) -> dict[str, Request]:
        return {_find(s, SVC, "name") or "": Request.from_xml(s) for s in _all(config, SVC, "sessions/session")}

    async def _reconcile(self, requests: dict[str, Request], refuse: bool) -> None:
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

    async def _place(self, requests: dict[str, Request], view: ForwardingView | None,
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
            if view is None or placement.path is None or placement.status not in ("active", "degraded"):
                continue
            short = self._rate_problem(placement.path, placements, view)
            if short:
                await self._set_status(name, placement, "degraded", short)
            elif placement.status == "degraded":
                await self._set_status(name, placement, "active", "the key rate is back on every link of the path")

    def _path_problem(self, path: Path, request: Request, view: ForwardingView, reachable: set[str]) -> str:
        """Why a placed path is no longer sound, or ''."""
        for link_id in path.link_ids:
            link = view.links.get(link_id)
            if link is None:
                return f"link {link_id} is gone from the forwarding topology"
            if link.status != "ACTIVE":
                why = self.link_reasons.get(link.link_id)
                return f"link {link.link_id} is {link.status}" + (f" ({why})" if why else "")
            if link.link_id in self.alarms:
                return f"link {link.link_id} has a QBER alarm ({self.alarms[link.link_id]})"
            if request.qber_ceiling is not None and (link.qber is None or link.qber > request.qber_ceiling):
                return f"link {link.link_id} has QBER {link.qber}%, above the ceiling of {request.qber_ceiling}%"
        down = [km for node, km in zip(path.nodes, path.kms) if not view.is_external(node) and km not in reachable]
        return f"key manager {down[0]} is unreachable" if down else ""

    @staticmethod
    def _rate_problem(path: Path, placements: dict[str, Placement], view: ForwardingView) -> str:
        """A link of the path whose eskr no longer covers the sessions placed on it, or ''."""
        for link_id in path.link_ids:
            load = sum(p.request.rate for p in placements.values()
                       if p.path is not None and p.status != "expired" and link_id in p.path.link_ids)
            eskr = view.links[link_id].eskr if link_id in view.links else 0
            if eskr < load:
                return f"link {link_id}: eskr {eskr} b/s, below the {load} b/s of its sessions"
        return ""

    def _reachable(self) -> dict[str, str]:
        """The key managers connected and read: km-id -> device name."""
        return {v.km_id: name for name, v in self.kms.items() if self.links[name].connected.is_set()}

    def _kms_of(self, request: Request, view: ForwardingView) -> tuple[str, str]:
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
                far = next((n for n in link.ends if view.is_external(n)), None) if link else None
                if far is None:
                    raise NoPath(f"{border_link} is not an inter-domain link of the forwarding topology")
                kms.append(view.km(far) or "")
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
            (a, a_far), (b, b_far) = ((view.km(n), view.is_external(n)) for n in link.ends)
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
        return wanted

    async def _read_forwarding(self) -> ForwardingView:
        """The forwarding topology, and the QBER alarms raised now (from its alarm list)."""
        nc = await self.forwarding.session(FORWARDING_TIMEOUT_S)
        data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"/><alarms xmlns="{AL}"><alarm-list/></alarms>'))
        km_by_site = {v.site: v.km_id for v in self.kms.values() if v.site}
        self.alarms = qber_alarms(data)
        return ForwardingView.from_xml(data, km_by_site)

    async def _set_status(self, name: str, placement: Placement, status: str, reason: str) -> None:
        """A new reason, and a new status told to subscribers when it is one."""
        previous, placement.reason = placement.status, reason
        if status != previous:
            placement.status, placement.since = status, now()
            await self._notify(name, status, previous, reason)

    async def _notify(self, name: str, status: str, previous: str | None, reason: str) -> None:
        change = etree.Element(f"{{{SVC}}}session-status-change", nsmap={None: SVC})
        _sub(change, SVC, "name", name)
        _sub(change, SVC, "status", status)
        if previous is not None:
            _sub(change, SVC, "previous-status", previous)
        _sub(change, SVC, "reason", reason[:REASON_LENGTH])
        _sub(change, SVC, "time", now().isoformat())
        log.info("%s: session %s %s: %s", self.name, name, status, reason)
        await self.server.notify(change)

    # --- northbound: state and plan-path ---------------------------------------------------------

    async def state(self) -> etree._Element | None:
        data = etree.Element(f"{{{BASE_NS}}}data", nsmap={None: BASE_NS})
        counters = await self._delivered()
        sessions = _sub(data, SVC, "sessions")
        for name, placement in sorted(self.sessions.items()):
            entry = _sub(sessions, SVC, "session")
            _sub(entry, SVC, "name", name)
            _sub(entry, SVC, "status", placement.status)
            _sub(entry, SVC, "reason", placement.reason[:REASON_LENGTH])
            _sub(entry, SVC, "status-since", placement.since.isoformat())
            if placement.path is not None:
                _path_xml(_sub(entry, SVC, "path"), placement.path)
            keys, bits = counters.get(name, (0, 0))
            _sub(entry, SVC, "delivered-keys", keys)
            _sub(entry, SVC, "delivered-bits", bits)
        directory = _sub(data, SVC, "sae-directory")
        # Listed once every key manager has been read: a partial directory would tell the
        # levels above that the SAEs of the others are attached nowhere.
        for sae, km in sorted(self.sae_directory().items() if self.synced.is_set() else ()):
            entry = _sub(directory, SVC, "sae")
            _sub(entry, SVC, "sae-id", sae)
            _sub(entry, SVC, "km-id", km)
        return data

    async def _delivered(self) -> dict[str, tuple[int, int]]:
        """Keys and bits delivered per session, as the source SAE's key manager counts them
        (for a segment, see the module's docstring)."""
        link_of = self._reachable()
        wanted: dict[str, list[tuple[str, str]]] = {}  # device -> (session, counter)
        for name, (km, counter) in self.counted_at.items():
            if km in link_of:
                wanted.setdefault(link_of[km], []).append((name, counter))

        async def read(link_name: str) -> dict[str, tuple[int, int]]:
            nc = await self.links[link_name].session(STATE_TIMEOUT_S)
            async with asyncio.timeout(STATE_TIMEOUT_S):
                data = await nc.get(filter=("subtree", f'<key-manager xmlns="{KM}"><sessions/><relay-statistics/>'
                                                       "</key-manager>"))
            sessions = {_find(s, KM, "session-id"): s for s in _all(data, KM, "key-manager/sessions/session")} \
                if data is not None else {}
            pairs = {(_find(p, KM, "master-sae-id"), _find(p, KM, "slave-sae-id")): p
                     for p in _all(data, KM, "key-manager/relay-statistics/sae-pair")} if data is not None else {}
            out = {}
            for name, counter in wanted[link_name]:
                placement = self.sessions.get(name)  # gone if deleted while the key manager answered
                if placement is None:
                    continue
                entry = sessions.get(name) if counter == "delivered" else \
                    pairs.get((placement.request.source_sae, placement.request.destination_sae))
                if entry is not None:
                    keys, bits = (int(_find(entry, KM, f"{counter}-{unit}") or 0) for unit in ("keys", "bits"))
                    out[name] = (keys, bits)
            return out

        counters: dict[str, tuple[int, int]] = {}
        for result in await asyncio.gather(*(read(n) for n in wanted), return_exceptions=True):
            if isinstance(result, dict):
                counters.update(result)
        return counters

    async def _plan_path(self, session, operation: etree._Element, context) -> list[etree._Element]:
        request = Request.from_xml(operation)
        count = int(_find(operation, SVC, "path-count") or 1)
        async with self._lock:
            try:
                view = await self._read_forwarding()
                if _find(operation, SVC, "include-buildable") == "true":
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
            entry = etree.Element(f"{{{SVC}}}path", nsmap={None: SVC})
            _sub(entry, SVC, "index", index)
            _sub(entry, SVC, "headroom", max(0, path.headroom))
            _path_xml(entry, path)
            for link_id in path.link_ids:
                if view.links[link_id].buildable:
                    _sub(entry, SVC, "buildable-link", link_id)
            out.append(entry)
        return out

    async def _add_buildable(self, view: ForwardingView) -> None:
        """Add the PHYS links that could be built (controller.buildable) to `view`, from the
        forwarding topology and the connectivity controller's fibre network."""
        if self.connectivity is None:
            raise RPCError("operation-failed", "include-buildable: this service controller reads no connectivity "
                                               "controller, so it cannot tell which links could be built")
        networks = ("subtree", f'<networks xmlns="{NW}"/>')
        forwarding = await (await self.forwarding.session(FORWARDING_TIMEOUT_S)).get(filter=networks)
        endpoint = self.connectivity
        async with asyncio.timeout(FORWARDING_TIMEOUT_S):
            async with await NetconfClient.connect(endpoint.host, endpoint.port, endpoint.username,
                                                   password=endpoint.password,
                                                   client_keys=endpoint.client_keys) as nc:
                fibre = await nc.get(filter=networks)
        for link in buildable_links(forwarding, fibre):
            if link.link_id not in view.links and all(n in view.nodes for n in link.ends):
                view.links[link.link_id] = QkdLink(link.link_id, "", link.ends, "BUILDABLE", link.eskr, link.qber,
                                                   buildable=True)


def _counted_at(path: Path, request: Request) -> tuple[str, str]:
    """The key manager, and its counter, of a session's delivered keys (see the docstring)."""
    segment = request.segment
    if segment is None:
        return path.kms[0], "delivered"
    if segment.ingress_link is None:
        return path.kms[0], "forwarded"
    return (path.kms[-1], "received") if segment.egress_link is None else (path.kms[-2], "forwarded")


def _path_xml(parent: etree._Element, path: Path) -> None:
    """qit:key-path hops under `parent`."""
    for i, (node, km) in enumerate(zip(path.nodes, path.kms)):
        hop = _sub(parent, SVC, "hop")
        _sub(hop, SVC, "index", i)
        _sub(hop, SVC, "km-id", km)
        _sub(hop, SVC, "node-id", node)
        if i < len(path.link_ids):
            _sub(hop, SVC, "link-id", path.link_ids[i])


async def read_sessions(nc: NetconfClient) -> dict[str, dict[str, str]]:
    """Status, reason and path (as 'node - node') of every session on a service controller."""
    data = await nc.get(filter=("subtree", f'<sessions xmlns="{SVC}"/>'))
    out = {}
    for s in _all(data, SVC, "sessions/session") if data is not None else []:
        hops = sorted(_all(s, SVC, "path/hop"), key=lambda h: int(_find(h, SVC, "index") or 0))
        out[_find(s, SVC, "name") or ""] = {
            "status": _find(s, SVC, "status") or "", "reason": _find(s, SVC, "reason") or "",
            "path": " - ".join(_find(h, SVC, "node-id") or "" for h in hops),
            "delivered-keys": _find(s, SVC, "delivered-keys") or "0"}
    return out
