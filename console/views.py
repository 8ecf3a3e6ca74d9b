"""What the page is shown of each level: a <get> of the level read with the `models` readers
into plain, JSON-ready dicts. Each `*_view` turns a <data> tree into the dict (a reply, or
the copy a YANG-Push subscription keeps), so a test can feed it a tree; `READERS` says, per
kind of level, what to ask for (a subtree filter to read it, an on-change `Watch` to follow
it) and which view to build."""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from models import network as network_model
from models.alarms import Alarm, read_alarms
from models import entanglement as entanglement_model, fabric as fabric_model
from models.connectivity import read_fibre_network, read_path_states
from models.forwarding import ForwardingView
from models.intent import INTENTS_FILTER, read_intents
from models.key_manager import KmView, read_km_state
from models.ns import ALARMS, CONNECTIVITY, ENTANGLEMENT_SERVICE, INTENT, KEY_MANAGER, NW
from models.service import SERVICE_FILTER, ServiceView
from netconf_core import Watch
from netconf_core.ns import identity, localname

NETWORKS_FILTER = f'<networks xmlns="{NW}"/><alarms xmlns="{ALARMS}"><alarm-list/></alarms>'
KM_FILTER = f'<key-manager xmlns="{KEY_MANAGER}"><km-id/><site/><key-pools/><sessions/></key-manager>'


def alarms_view(data: etree._Element | None) -> list[dict]:
    return [_alarm(a) for a in read_alarms(data) if not a.cleared]


def _alarm(alarm: Alarm) -> dict:
    return {"type": alarm.type_id, "resource": alarm.resource, "link": alarm.link_id, "severity": alarm.severity,
            "text": alarm.text, "since": alarm.last_raised or alarm.last_changed}


def connectivity_view(data: etree._Element | None) -> dict:
    """The fibre network: sites and switches, spans with their state, optical paths."""
    fibre = read_fibre_network(data)
    network = network_model.find_network(data, network_id=fibre.network_id) if fibre.network_id else None
    states = read_path_states(network)
    faults = {}
    for link in network_model.links(network):
        span = CONNECTIVITY.find(link, "fibre-span")
        if span is not None:
            faults[network_model.link_id(link)] = sorted(identity(f.text or "") or ""
                                                         for f in CONNECTIVITY.all(span, "active-faults"))
    paths = []
    for name, state in sorted(states.items()):
        paths.append({"name": name, "status": state.status, "reason": state.reason, "loss": state.loss,
                      "spans": [hop.span for hop in state.hops] or list(fibre.optical_paths.get(name, ()))})
    return {
        "network": fibre.network_id,
        "nodes": [{"id": n.id, "kind": n.kind, "site": n.site} for n in sorted(fibre.nodes.values(), key=_id)],
        "spans": [{"id": s.id, "a": s.a[0], "b": s.b[0], "loss": round(s.loss_db, 3), "up": s.up,
                   "eavesdropper": s.eavesdropper, "faults": faults.get(s.id, [])}
                  for s in sorted(fibre.spans.values(), key=_id)],
        "paths": paths,
        "alarms": alarms_view(data),
    }


def forwarding_view(data: etree._Element | None) -> dict:
    """The QKD network: nodes at their sites, links with status, key rates and QBER."""
    view = ForwardingView.parse(data)
    return {
        "network": view.network_id,
        "nodes": [{"id": n.id, "site": n.site, "km": n.km_id, "qkdn": n.qkdn_id}
                  for n in sorted(view.nodes.values(), key=_id)],
        "links": [{"id": l.id, "qkdl": l.qkdl_id, "a": l.a[0], "b": l.b[0], "type": l.link_type, "status": l.status or "", "up": l.up,
                   "skr": l.skr, "eskr": l.eskr, "qber": l.qber, "loss": l.channel_loss, "path": _optical_path(l),
                   "peer_km": l.peer_km}
                  for l in sorted(view.links.values(), key=_id)],
        "alarms": alarms_view(data),
    }


def service_view(data: etree._Element | None) -> dict:
    """The key-delivery sessions and the SAE directory."""
    view = ServiceView.parse(data)
    return {
        "sessions": [{"name": s.name, "source": s.source_sae, "destination": s.destination_sae, "rate": s.rate,
                      "status": s.status or "", "reason": s.reason, "since": s.since,
                      "delivered_bits": s.delivered_bits, "delivered_keys": s.delivered_keys,
                      "path": [{"km": h.km_id, "node": h.node_id, "link": h.link_id} for h in s.path]}
                     for _, s in sorted(view.sessions.items())],
        "saes": dict(sorted(view.saes.items())),
    }


def orchestrator_view(data: etree._Element | None) -> dict:
    """The intents: state, reason, paths, conditions and history."""
    intents = []
    for name, i in sorted(read_intents(data).items()):
        intents.append({
            "name": name, "state": i.get("state", ""), "reason": i.get("reason", ""),
            "since": i.get("state-since", ""), "source": i.get("source-sae", ""),
            "destination": i.get("destination-sae", ""), "min_rate": _number(i.get("min-rate")),
            "observed_rate": _number(i.get("observed-rate")), "priority": _number(i.get("priority")),
            "paths": i["paths"], "conditions": [{**c, "type": (c.get("type") or "").split(":")[-1]}
                                                 for c in i["conditions"]],
            "history": i["history"]})
    return {"intents": intents}


def key_manager_view(data: etree._Element | None) -> dict:
    """One key manager: its pools (stored against capacity) and sessions (token buckets)."""
    root = KEY_MANAGER.find(data, "key-manager")
    if root is None:
        return {"id": "", "pools": [], "sessions": []}
    config = KmView.from_xml(root)
    pools, sessions = read_km_state(root)
    return {
        "id": config.km_id, "site": config.site,
        "pools": [{"link": link, "peer": config.config.pools.get(link, ""), "stored": p.stored,
                   "capacity": p.capacity, "low_watermark": config.low_watermarks.get(link)}
                  for link, p in sorted(pools.items())],
        "sessions": [{"id": sid, "status": s.status, "reason": s.reason, "tokens": s.tokens,
                      "burst": config.config.sessions[sid].burst if sid in config.config.sessions else None,
                      "rate": config.config.sessions[sid].rate if sid in config.config.sessions else None,
                      "master": config.config.sessions[sid].master_sae if sid in config.config.sessions else None,
                      "slave": config.config.sessions[sid].slave_sae if sid in config.config.sessions else None}
                     for sid, s in sorted(sessions.items())],
    }


def fabric_view(data: etree._Element | None) -> dict:
    """The entanglement fabric: quantum nodes at their sites, elementary links with their
    status, generation rate (pairs/s) and fresh fidelity."""
    view = fabric_model.FabricView.parse(data)
    return {
        "network": view.network_id,
        "nodes": [{"id": n.id, "role": n.role, "site": n.site, "status": n.status, "storage": n.storage_qubits,
                   "free": n.free_qubits} for n in sorted(view.nodes.values(), key=_id)],
        "links": [{"id": l.id, "a": l.a[0], "b": l.b[0], "type": l.link_type, "status": l.status or "", "up": l.up,
                   "rate": l.generation_rate, "fidelity": l.fidelity, "length": l.length_km,
                   "reserved": l.reserved_rate} for l in sorted(view.links.values(), key=_id)],
    }


def entanglement_view(data: etree._Element | None) -> dict:
    """The entanglement sessions: what each asks, its status, path and delivered pairs."""
    view = entanglement_model.EntanglementView.parse(data)
    sessions = []
    for name in sorted(set(view.requests) | set(view.sessions)):
        request, status = view.requests.get(name), view.sessions.get(name)
        sessions.append({
            "name": name, "source": request.source_endpoint if request else None,
            "destination": request.destination_endpoint if request else None,
            "min_fidelity": request.min_fidelity if request else None, "rate": request.pair_rate if request else None,
            "status": (status.status if status else None) or "", "reason": (status.reason if status else None) or "",
            "path": list(status.path) if status else [], "links": list(status.links) if status else [],
            "expected_fidelity": status.expected_fidelity if status else None,
            "delivered_pairs": status.delivered_pairs if status else None,
            "delivered_fidelity": status.delivered_fidelity if status else None})
    return {"sessions": sessions}


@dataclass(frozen=True)
class Reader:
    """How the console keeps one kind of level's view: `filter` (a subtree) read by <get>, or,
    with `watch`, an on-change YANG-Push subscription whose copy (`DeviceLink.replica`) the
    view is built from. `modules` hold what the selection holds (the copy's schema)."""

    filter: str
    view: object            # <data> tree -> dict
    watch: Watch | None = None

    async def read(self, nc) -> dict:
        return self.view(await nc.get(filter=("subtree", self.filter)))


def _watch(xpath: str, modules: tuple[str, ...], **prefixes: str) -> Watch:
    return Watch(xpath, tuple(sorted(prefixes.items())), "operational", modules=modules)


# Key managers and the service controller are read, not followed: their pools fill every
# second (an on-change subscription would be a poll of the device four times a second) and
# the service controller reads every key manager to answer for its sessions.
NETWORK_ALARMS = "/nw:networks | /al:alarms/al:alarm-list"
READERS = {
    "connectivity": Reader(NETWORKS_FILTER, connectivity_view, _watch(
        NETWORK_ALARMS, ("qi-connectivity", "qi-types", "ietf-alarms", "qi-alarms"), nw=str(NW), al=str(ALARMS))),
    "forwarding": Reader(NETWORKS_FILTER, forwarding_view, _watch(
        NETWORK_ALARMS, ("qi-forwarding", "etsi-qkd-node-types", "qi-types", "ietf-alarms", "qi-alarms"),
        nw=str(NW), al=str(ALARMS))),
    "service": Reader(SERVICE_FILTER, service_view),
    "orchestrator": Reader(INTENTS_FILTER, orchestrator_view, _watch("/in:intents", ("qi-intent",), **{"in": str(INTENT)})),
    "key-manager": Reader(KM_FILTER, key_manager_view),
    "fabric": Reader(fabric_model.FILTER, fabric_view, _watch(
        "/nw:networks", ("qi-fabric", "qi-quantum-node", "qi-types"), nw=str(NW))),
    "entanglement": Reader(entanglement_model.FILTER, entanglement_view, _watch(
        "/es:sessions", ("qi-entanglement-service", "qi-quantum-node", "qi-types"), es=str(ENTANGLEMENT_SERVICE))),
}


# --- notifications, for the event log ----------------------------------------------------------------

SEVERITY_OF_EVENT = {"span-down": "major", "span-up": "cleared", "pool-empty": "major", "pool-low": "warning",
                     "link-status-change": "info", "optical-path-status-change": "info",
                     "intent-state-change": "info", "session-status-change": "info", "session-state-change": "info"}
RESOURCE_LEAVES = ("resource", "link-id", "span-id", "name", "session-id", "qkdl_id", "node-id")
TEXT_LEAVES = ("alarm-text", "reason", "text", "description")


def event_view(level: str, notification: etree._Element) -> dict | None:
    """An entry of the event log: time, level, what happened, to which resource, how severe
    (None for the base NETCONF notifications: sessions and configuration changes)."""
    body = next((c for c in notification if isinstance(c.tag, str) and localname(c) != "eventTime"), None)
    if body is None:
        return None
    leaves = {}
    for element in body.iter():
        if isinstance(element.tag, str) and len(element) == 0 and element.text and element.text.strip():
            leaves.setdefault(localname(element), element.text.strip())
    name = localname(body)
    if name.startswith("netconf-"):   # ietf-netconf-notifications: the levels' own bookkeeping
        return None
    severity = leaves.get("perceived-severity") or SEVERITY_OF_EVENT.get(name, "info")
    if name == "qber-alarm":
        severity = "major" if leaves.get("raised") == "true" else "cleared"
    if name.endswith("status-change") and (leaves.get("status") or leaves.get("to")) in ("down", "failed", "OFF"):
        severity = "minor"
    resource = next((leaves[k] for k in RESOURCE_LEAVES if k in leaves), "")
    status = leaves.get("status") or leaves.get("to")
    text = next((leaves[k] for k in TEXT_LEAVES if k in leaves), "")
    time = next((c.text for c in notification if isinstance(c.tag, str) and localname(c) == "eventTime"), "")
    return {"time": time or "", "level": level, "event": name, "resource": _short_resource(resource),
            "status": status or "", "severity": identity(severity) or severity, "text": text}


def apply_event(view: dict | None, event: dict) -> dict | None:
    """`view` with what a notification (its `event_view`) says of it applied, before the level's
    next update confirms it and brings the rest (the paths over a cut span, alarms); None when
    the notification says nothing the view shows. The view is copied, not changed."""
    if view is None:
        return None
    name, resource, status = event["event"], event["resource"], event["status"]
    if name in ("span-down", "span-up") and "spans" in view:
        up = name == "span-up"
        spans = [dict(s, up=up) if s["id"] == resource and s["up"] != up else s for s in view["spans"]]
        return {**view, "spans": spans} if spans != view["spans"] else None
    if name == "intent-state-change" and status and "intents" in view:
        intents = [dict(i, state=status) if i["name"] == resource and i["state"] != status else i
                   for i in view["intents"]]
        return {**view, "intents": intents} if intents != view["intents"] else None
    return None


def _short_resource(resource: str) -> str:
    """An alarm's instance-identifier shortened to the link it names, when it names one."""
    return network_model.resource_link(resource) if "link-id=" in resource else resource


def _optical_path(link) -> str | None:
    """The optical path a PHYS link rides on: named by the link unless it names another
    (models.forwarding.LinkRequest.path_name); an inter-domain or VIRT link has none."""
    if link.link_type != "PHYS" or link.external:
        return None
    return link.optical_path or link.id


def _id(item) -> str:
    return item.id


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
