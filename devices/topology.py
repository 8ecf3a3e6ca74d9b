"""Topology files: the sites, fibre spans, optical switches, QKD nodes, key managers and SAEs
of one emulated network (format: devices/topologies/README.md).

`load_topology` reads and validates a file and reports every mistake at once, each naming
the file, the entry and the problem; a topology of several domains (administrative domains,
each its own operator's network, joined by inter-domain spans between border sites) gives
each domain's own part with `Topology.domain_part`; `default_topology` is the embedded Madrid metro network;
`generate_topology` makes a ring-with-chords network of any size; `build_twin` turns a
topology into the digital twin of its fibre plant.
"""
from __future__ import annotations

import importlib.resources
import json
import pathlib
import random
from dataclasses import dataclass
from typing import Any

import networkx as nx
import yaml

from devices.twin import MAX_PORT, Clock, Endpoint, Twin

DEFAULT_TOPOLOGY = "madrid.yaml"
SECTIONS = ("sites", "switches", "spans", "qkd_nodes", "key_managers", "saes", "quantum_nodes", "entanglement_links")
# libyaml's safe loader when PyYAML was built with it: a 10,000-device topology in a fraction
# of the pure-Python parser's time (every worker of a device host reads it).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
QUANTUM_ROLES = ("end-node", "repeater")
ENTANGLEMENT_LINK_TYPES = ("single-click", "double-click", "source-in-the-middle")


class TopologyError(ValueError):
    """Every problem found in one topology; `problems` holds them one by one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class SiteSpec:
    id: str
    name: str
    domain: str | None = None


@dataclass(frozen=True)
class SwitchSpec:
    id: str
    site: str
    ports: tuple[int, ...]
    insertion_loss_db: float


@dataclass(frozen=True)
class SpanSpec:
    id: str
    a: Endpoint
    b: Endpoint
    length_km: float
    attenuation_db_per_km: float


@dataclass(frozen=True)
class InterfaceSpec:
    id: int  # the ETSI 015 qkdi_id (uint32)
    attach: Endpoint


@dataclass(frozen=True)
class QkdNodeSpec:
    id: str
    site: str
    interfaces: tuple[InterfaceSpec, ...]


@dataclass(frozen=True)
class KeyManagerSpec:
    id: str
    site: str


@dataclass(frozen=True)
class SaeSpec:
    id: str
    km: str


@dataclass(frozen=True)
class QuantumInterfaceSpec:
    name: str
    attach: Endpoint


@dataclass(frozen=True)
class QuantumNodeSpec:
    """A quantum node (qi-quantum-node): an end node or a repeater, its device profile (the
    reference's parameter sets: defaults of a trapped-ion-like node) and its interfaces."""

    id: str
    site: str
    role: str
    interfaces: tuple[QuantumInterfaceSpec, ...]
    applications: tuple[str, ...] = ()
    storage_qubits: int = 4
    storage_t2_s: float | None = 1.0
    gate_fidelity: float = 0.99
    emission_probability: float = 0.111
    bright_state_population: float = 0.05


@dataclass(frozen=True)
class EntanglementLinkSpec:
    """An elementary entanglement link between two quantum nodes' interfaces."""

    id: str
    a: tuple[str, str]  # (node, interface)
    b: tuple[str, str]
    link_type: str = "single-click"


@dataclass(frozen=True)
class Topology:
    name: str
    sites: tuple[SiteSpec, ...]
    switches: tuple[SwitchSpec, ...]
    spans: tuple[SpanSpec, ...]
    qkd_nodes: tuple[QkdNodeSpec, ...]
    key_managers: tuple[KeyManagerSpec, ...]
    saes: tuple[SaeSpec, ...]
    quantum_nodes: tuple[QuantumNodeSpec, ...] = ()
    entanglement_links: tuple[EntanglementLinkSpec, ...] = ()

    def fibre_graph(self) -> nx.Graph:
        """Sites and switches joined by their spans (parallel spans become one edge), and each
        switch joined to the site it stands on."""
        graph = nx.Graph()
        graph.add_nodes_from(s.id for s in self.sites)
        for switch in self.switches:
            graph.add_edge(switch.id, switch.site, colocated=True)
        for span in self.spans:
            graph.add_edge(span.a.node, span.b.node, span=span.id, length_km=span.length_km)
        return graph

    @property
    def domains(self) -> tuple[str, ...]:
        """The administrative domains of the sites, sorted; () for a single-operator network."""
        return tuple(sorted({s.domain for s in self.sites if s.domain}))

    def domain_of(self, node: str) -> str | None:
        """The domain of a site or of a switch (its site's)."""
        site = next((s.site for s in self.switches if s.id == node), node)
        return next((s.domain for s in self.sites if s.id == site), None)

    def inter_domain_spans(self) -> tuple[SpanSpec, ...]:
        """Spans whose two ends lie in different domains."""
        return tuple(s for s in self.spans if self.domain_of(s.a.node) != self.domain_of(s.b.node))

    def domain_part(self, domain: str) -> Topology:
        """What one domain's operator owns: its sites and everything on them, and the spans
        with both ends among them (not the inter-domain spans)."""
        if domain not in self.domains:
            raise ValueError(f"topology {self.name} has no domain {domain!r} (domains: {', '.join(self.domains)})")
        sites = {s.id for s in self.sites if s.domain == domain}
        switches = tuple(s for s in self.switches if s.site in sites)
        inside = sites | {s.id for s in switches}
        kms = tuple(km for km in self.key_managers if km.site in sites)
        km_ids = {km.id for km in kms}
        return Topology(f"{self.name}-{domain}", tuple(s for s in self.sites if s.id in sites), switches,
                        tuple(s for s in self.spans if s.a.node in inside and s.b.node in inside),
                        tuple(n for n in self.qkd_nodes if n.site in sites), kms,
                        tuple(s for s in self.saes if s.km in km_ids))


# -- reading -------------------------------------------------------------------------------

def load_topology(path: str | pathlib.Path) -> Topology:
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_YAML_LOADER)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise TopologyError([f"{path}: not valid {kind}: {exc}"]) from exc
    return parse_topology(data, str(path))


def default_topology() -> Topology:
    """The embedded Madrid metro network."""
    return embedded_topology(DEFAULT_TOPOLOGY)


def embedded_topology(file_name: str) -> Topology:
    """A topology shipped in devices/topologies."""
    resource = importlib.resources.files("devices") / "topologies" / file_name
    with importlib.resources.as_file(resource) as path:
        return load_topology(path)


def parse_topology(data: Any, source: str) -> Topology:
    """Validate `data` (as read from `source`) and build the Topology; TopologyError lists
    every problem found."""
    return _Parser(source).parse(data)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.ids: dict[str, str] = {}  # every top-level id -> the entry that defines it

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{self.source}: {where}: {text}")

    def parse(self, data: Any) -> Topology:
        if not isinstance(data, dict):
            raise TopologyError([f"{self.source}: the topology must be a mapping with the keys "
                                 f"name, {', '.join(SECTIONS)}"])
        for key in sorted(set(data) - {"name", "description", *SECTIONS}):
            self.problem("top level", f"unknown key {key!r} (expected name, description, {', '.join(SECTIONS)})")
        name = data.get("name", pathlib.Path(self.source).stem)
        if not isinstance(name, str) or not name:
            self.problem("name", "must be a non-empty string")
        sections = {s: self.section(data, s) for s in SECTIONS}
        if not sections["sites"]:
            self.problem("sites", "at least one site is needed")

        sites = tuple(self.site(w, e) for w, e in sections["sites"])
        site_ids = {s.id for s in sites}
        switches = tuple(self.switch(w, e, site_ids) for w, e in sections["switches"])
        # A switch whose id is taken by a site is left out, so that its mistake is reported once.
        ports = {s.id: set(s.ports) for s in switches if s.id not in site_ids}
        span_ends: dict[Endpoint, str] = {}
        switch_sites = {s.id: s.site if s.site in site_ids else "" for s in switches}
        spans = tuple(self.span(w, e, site_ids, ports, span_ends) for w, e in sections["spans"])
        self.domains(sections["sites"], sites, sections["spans"], spans, switch_sites)
        attachments: dict[Endpoint, str] = {}
        qkd_nodes = tuple(self.qkd_node(w, e, site_ids, ports, switch_sites, span_ends, attachments)
                          for w, e in sections["qkd_nodes"])
        key_managers = tuple(self.key_manager(w, e, site_ids) for w, e in sections["key_managers"])
        self.one_key_manager_per_qkd_site(sections["qkd_nodes"], qkd_nodes, sections["key_managers"], key_managers)
        km_ids = {km.id for km in key_managers}
        saes = tuple(self.sae(w, e, km_ids) for w, e in sections["saes"])
        quantum_nodes = tuple(self.quantum_node(w, e, site_ids, ports, switch_sites, span_ends, attachments)
                              for w, e in sections["quantum_nodes"])
        entanglement_links = tuple(self.entanglement_link(w, e, quantum_nodes)
                                   for w, e in sections["entanglement_links"])
        if self.problems:
            raise TopologyError(self.problems)
        return Topology(name, sites, switches, spans, qkd_nodes, key_managers, saes, quantum_nodes,
                        entanglement_links)

    # -- generic checks ----------------------------------------------------------------

    def section(self, data: dict, name: str) -> list[tuple[str, dict]]:
        """The entries of a section as (where, mapping), where = 'spans[3] (id 'x')'."""
        entries = data.get(name, [])
        if entries is None:
            return []
        if not isinstance(entries, list):
            self.problem(name, "must be a list")
            return []
        out = []
        for i, entry in enumerate(entries):
            where = f"{name}[{i}]"
            if not isinstance(entry, dict):
                self.problem(where, "must be a mapping")
                continue
            if isinstance(entry.get("id"), str):
                where += f" ({entry['id']!r})"
            out.append((where, entry))
        return out

    def fields(self, where: str, entry: dict, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> bool:
        ok = True
        for key in sorted(set(entry) - set(required) - set(optional)):
            self.problem(where, f"unknown field {key!r} (expected {', '.join(required + optional)})")
        for key in required:
            if key not in entry:
                self.problem(where, f"missing field {key!r}")
                ok = False
        return ok

    def text(self, where: str, entry: dict, key: str, default: str = "") -> str:
        value = entry.get(key, default)
        if not isinstance(value, str) or not value:
            self.problem(where, f"{key} must be a non-empty string, got {value!r}")
            return ""
        return value

    def number(self, where: str, entry: dict, key: str, default: float) -> float:
        value = entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            self.problem(where, f"{key} must be a number >= 0, got {value!r}")
            return default
        return float(value)

    def new_id(self, where: str, entry: dict) -> str:
        ident = self.text(where, entry, "id")
        if ident in self.ids:
            self.problem(where, f"duplicate id {ident!r}: already used by {self.ids[ident]}")
        elif ident:
            self.ids[ident] = where.split(" ")[0]
        return ident

    def endpoint(self, where: str, role: str, value: Any, site_ids: set[str],
                 ports: dict[str, set[int]]) -> Endpoint | None:
        """`value` as an endpoint that exists: a site (optionally with a port) or a switch port."""
        try:
            if not isinstance(value, str):
                raise ValueError(f"endpoint {value!r} is not 'node' or 'node:port'")
            end = Endpoint.parse(value)
        except ValueError as exc:
            self.problem(where, f"{role}: {exc}")
            return None
        if end.node in ports:
            if end.port is None:
                self.problem(where, f"{role} {value!r} names switch {end.node!r} without a port")
                return None
            if ports[end.node] and end.port not in ports[end.node]:  # no ports: the list itself was wrong
                self.problem(where, f"{role} {value!r}: switch {end.node!r} has no port {end.port} "
                                    f"(its ports: {', '.join(map(str, sorted(ports[end.node])))})")
                return None
        elif end.node not in site_ids:
            self.problem(where, f"{role} {value!r} leads nowhere: no site or switch {end.node!r}")
            return None
        return end

    def known(self, where: str, entry: dict, key: str, known: set[str], kind: str) -> str:
        ident = self.text(where, entry, key)
        if ident and ident not in known:
            self.problem(where, f"{key} {ident!r} is not a known {kind}")
        return ident

    # -- entries -------------------------------------------------------------------------

    def site(self, where: str, entry: dict) -> SiteSpec:
        self.fields(where, entry, ("id",), ("name", "domain"))
        ident = self.new_id(where, entry)
        domain = self.text(where, entry, "domain") if "domain" in entry else None
        return SiteSpec(ident, self.text(where, entry, "name", ident or "?"), domain or None)

    def domains(self, site_entries: list[tuple[str, dict]], sites: tuple[SiteSpec, ...],
                span_entries: list[tuple[str, dict]], spans: tuple[SpanSpec, ...],
                switch_sites: dict[str, str]) -> None:
        """Either every site names its domain or none does; a span between two domains
        joins two border sites (site ends, never switch ports: no operator's switch carries
        another's light)."""
        named = [site for site in sites if site.domain]
        if not named:
            return
        for (where, _), site in zip(site_entries, sites):
            if not site.domain and site.id:
                self.problem(where, f"has no domain, but sites {', '.join(repr(s.id) for s in named[:3])} "
                                    "name theirs: in a multi-domain topology every site belongs to a domain")
        site_domain = {s.id: s.domain for s in sites}
        domain = site_domain | {switch: site_domain.get(site) for switch, site in switch_sites.items()}
        for (where, _), span in zip(span_entries, spans):
            ends = (span.a, span.b)
            if domain.get(span.a.node) == domain.get(span.b.node) or any(e.node not in domain for e in ends):
                continue
            for end in ends:
                if end.node in switch_sites:
                    self.problem(where, f"joins domains {domain[span.a.node]!r} and {domain[span.b.node]!r} "
                                        f"but ends at switch port {str(end)!r}: an inter-domain span ends at "
                                        "border sites")

    def switch(self, where: str, entry: dict, site_ids: set[str]) -> SwitchSpec:
        self.fields(where, entry, ("id", "site", "ports"), ("insertion_loss_db",))
        ident = self.new_id(where, entry)
        site = self.known(where, entry, "site", site_ids, "site")
        ports = entry.get("ports", [])
        if not isinstance(ports, list) or not ports or not all(_is_int(p) and 1 <= p <= MAX_PORT for p in ports):
            self.problem(where, f"ports must be a non-empty list of port numbers from 1 to {MAX_PORT}, got {ports!r}")
            ports = []
        duplicates = sorted({p for p in ports if ports.count(p) > 1})
        if duplicates:
            self.problem(where, f"port(s) listed twice: {', '.join(map(str, duplicates))}")
        return SwitchSpec(ident, site, tuple(dict.fromkeys(ports)),
                          self.number(where, entry, "insertion_loss_db", 1.0))

    def span(self, where: str, entry: dict, site_ids: set[str], ports: dict[str, set[int]],
             span_ends: dict[Endpoint, str]) -> SpanSpec:
        self.fields(where, entry, ("id", "a", "b", "length_km"), ("attenuation_db_per_km",))
        ident = self.new_id(where, entry)
        ends = [self.endpoint(where, role, entry.get(role), site_ids, ports) if role in entry else None
                for role in ("a", "b")]
        a, b = ends
        if a is not None and a == b:
            self.problem(where, f"starts and ends at the same endpoint {str(a)!r}")
        for role, end in zip(("a", "b"), ends):
            if end is None or (role == "b" and end == a):
                continue
            if end in span_ends:
                self.problem(where, f"{role} {str(end)!r} already ends {span_ends[end]}")
            else:
                span_ends[end] = where
        return SpanSpec(ident, a or Endpoint("?"), b or Endpoint("?"),
                        self.number(where, entry, "length_km", 0.0),
                        self.number(where, entry, "attenuation_db_per_km", 0.2))

    def qkd_node(self, where: str, entry: dict, site_ids: set[str], ports: dict[str, set[int]],
                 switch_sites: dict[str, str], span_ends: dict[Endpoint, str],
                 attachments: dict[Endpoint, str]) -> QkdNodeSpec:
        self.fields(where, entry, ("id", "site"), ("interfaces",))
        ident = self.new_id(where, entry)
        site = self.known(where, entry, "site", site_ids, "site")
        raw = entry.get("interfaces", [])
        if not isinstance(raw, list):
            self.problem(where, "interfaces must be a list")
            raw = []
        interfaces: list[InterfaceSpec] = []
        for i, item in enumerate(raw):
            at = f"{where} interfaces[{i}]"
            if not isinstance(item, dict):
                self.problem(at, "must be a mapping with id and attach")
                continue
            if _is_int(item.get("id")):
                at += f" ({item['id']})"
            if not self.fields(at, item, ("id", "attach")):
                continue
            if_id = item["id"]
            if not (_is_int(if_id) and 1 <= if_id <= MAX_PORT):
                self.problem(at, f"id must be an interface number from 1 to {MAX_PORT}, got {if_id!r}")
                if_id = 0
            elif if_id in {x.id for x in interfaces}:
                self.problem(at, f"duplicate interface id {if_id} in QKD node {ident!r}")
            end = self.endpoint(at, "attach", item["attach"], site_ids, ports)
            if end is None:
                continue
            host_site = switch_sites[end.node] if end.node in ports else end.node
            if site and host_site and host_site != site:
                self.problem(at, f"attach {str(end)!r} is at site {host_site!r}, but the node is at site {site!r}")
            if end.node in ports and end in span_ends:
                self.problem(at, f"attach {str(end)!r}: that switch port already carries {span_ends[end]}; "
                                 f"plug interfaces into free ports")
            if end in attachments:
                self.problem(at, f"attach {str(end)!r} is already used by {attachments[end]}")
            attachments[end] = at
            interfaces.append(InterfaceSpec(if_id, end))
        return QkdNodeSpec(ident, site, tuple(interfaces))

    def quantum_node(self, where: str, entry: dict, site_ids: set[str], ports: dict[str, set[int]],
                     switch_sites: dict[str, str], span_ends: dict[Endpoint, str],
                     attachments: dict[Endpoint, str]) -> QuantumNodeSpec:
        optional = ("interfaces", "applications", "storage_qubits", "storage_t2_s", "gate_fidelity",
                    "emission_probability", "bright_state_population")
        self.fields(where, entry, ("id", "site", "role"), optional)
        ident = self.new_id(where, entry)
        site = self.known(where, entry, "site", site_ids, "site")
        role = entry.get("role")
        if role not in QUANTUM_ROLES:
            self.problem(where, f"role must be one of {', '.join(QUANTUM_ROLES)}, got {role!r}")
        interfaces: list[QuantumInterfaceSpec] = []
        raw = entry.get("interfaces", [])
        for i, item in enumerate(raw if isinstance(raw, list) else []):
            at = f"{where} interfaces[{i}]"
            if not isinstance(item, dict):
                self.problem(at, "must be a mapping with name and attach")
                continue
            if not self.fields(at, item, ("name", "attach")):
                continue
            name = self.text(at, item, "name")
            if name in {x.name for x in interfaces}:
                self.problem(at, f"duplicate interface name {name!r} in quantum node {ident!r}")
            end = self.endpoint(at, "attach", item["attach"], site_ids, ports)
            if end is None:
                continue
            host_site = switch_sites[end.node] if end.node in ports else end.node
            if site and host_site and host_site != site:
                self.problem(at, f"attach {str(end)!r} is at site {host_site!r}, but the node is at site {site!r}")
            if end in attachments:
                self.problem(at, f"attach {str(end)!r} is already used by {attachments[end]}")
            attachments[end] = at
            interfaces.append(QuantumInterfaceSpec(name, end))
        if not isinstance(raw, list):
            self.problem(where, "interfaces must be a list")
        apps = entry.get("applications", [])
        if not isinstance(apps, list) or not all(isinstance(a, str) and a for a in apps):
            self.problem(where, f"applications must be a list of names, got {apps!r}")
            apps = []
        storage = entry.get("storage_qubits", 4)
        if not _is_int(storage) or not 1 <= storage <= 65535:
            self.problem(where, f"storage_qubits must be a whole number from 1 to 65535, got {storage!r}")
            storage = 4
        t2 = entry.get("storage_t2_s", 1.0)
        if t2 is not None and (isinstance(t2, bool) or not isinstance(t2, (int, float)) or t2 <= 0):
            self.problem(where, f"storage_t2_s must be a number > 0 (or null: no decoherence), got {t2!r}")
            t2 = 1.0
        unit = {key: self.number(where, entry, key, default)
                for key, default in (("gate_fidelity", 0.99), ("emission_probability", 0.111),
                                     ("bright_state_population", 0.05))}
        for key, value in unit.items():
            if value > 1:
                self.problem(where, f"{key} must be within 0..1, got {value!r}")
        return QuantumNodeSpec(ident, site, role if role in QUANTUM_ROLES else "end-node", tuple(interfaces),
                               tuple(apps), storage, None if t2 is None else float(t2), **unit)

    def entanglement_link(self, where: str, entry: dict, nodes: tuple[QuantumNodeSpec, ...]) -> EntanglementLinkSpec:
        self.fields(where, entry, ("id", "a", "b"), ("type",))
        ident = self.new_id(where, entry)
        interfaces = {n.id: {i.name for i in n.interfaces} for n in nodes}
        ends = []
        for role in ("a", "b"):
            value = entry.get(role)
            node, _, interface = value.partition(":") if isinstance(value, str) else ("", "", "")
            if node not in interfaces:
                self.problem(where, f"{role} {value!r} must be 'quantum-node:interface' of a known quantum node")
            elif interface not in interfaces[node]:
                self.problem(where, f"{role} {value!r}: quantum node {node!r} has no interface {interface!r}")
            ends.append((node, interface))
        if ends[0][0] and ends[0][0] == ends[1][0]:
            self.problem(where, f"joins quantum node {ends[0][0]!r} to itself")
        link_type = entry.get("type", "single-click")
        if link_type not in ENTANGLEMENT_LINK_TYPES:
            self.problem(where, f"type must be one of {', '.join(ENTANGLEMENT_LINK_TYPES)}, got {link_type!r}")
        return EntanglementLinkSpec(ident, ends[0], ends[1], link_type)

    def key_manager(self, where: str, entry: dict, site_ids: set[str]) -> KeyManagerSpec:
        self.fields(where, entry, ("id", "site"))
        return KeyManagerSpec(self.new_id(where, entry), self.known(where, entry, "site", site_ids, "site"))

    def one_key_manager_per_qkd_site(self, node_entries: list[tuple[str, dict]], nodes: tuple[QkdNodeSpec, ...],
                                     km_entries: list[tuple[str, dict]], kms: tuple[KeyManagerSpec, ...]) -> None:
        qkd_sites = {n.site for n in nodes}
        km_at: dict[str, str] = {}
        for (where, _), km in zip(km_entries, kms):
            if not km.site:
                continue
            if km.site not in qkd_sites:
                self.problem(where, f"site {km.site!r} has no QKD node: a key manager sits with a QKD node")
            elif km.site in km_at:
                self.problem(where, f"site {km.site!r} already has key manager {km_at[km.site]}")
            else:
                km_at[km.site] = where
        for (where, _), node in zip(node_entries, nodes):
            if node.site and node.site not in km_at:
                self.problem(where, f"site {node.site!r} has no key manager: each QKD node site needs one")

    def sae(self, where: str, entry: dict, km_ids: set[str]) -> SaeSpec:
        self.fields(where, entry, ("id", "km"))
        return SaeSpec(self.new_id(where, entry), self.known(where, entry, "km", km_ids, "key manager"))


# -- generating ----------------------------------------------------------------------------

def generate_topology(nodes: int, seed: int = 0) -> dict:
    """A connected ring-with-chords network of `nodes` sites, each with a QKD node, a key
    manager and an SAE; fibre spans of 2 to 25 km. The same (nodes, seed) gives the same data."""
    if not _is_int(nodes) or nodes < 2:
        raise ValueError(f"a generated topology needs at least 2 nodes, got {nodes!r}")
    rng = random.Random(seed)
    width = len(str(nodes))
    site_ids = [f"site-{i:0{width}d}" for i in range(1, nodes + 1)]
    pairs = [(i, (i + 1) % nodes) for i in range(nodes if nodes > 2 else 1)]
    joined = {frozenset(p) for p in pairs}
    for _ in range(nodes // 4):
        a, b = rng.sample(range(nodes), 2)
        if frozenset((a, b)) not in joined:
            joined.add(frozenset((a, b)))
            pairs.append((a, b))
    interfaces: list[list[dict]] = [[] for _ in range(nodes)]
    spans = []
    for a, b in pairs:
        ends = []
        for i in (a, b):
            port = len(interfaces[i]) + 1
            interfaces[i].append({"id": port, "attach": f"{site_ids[i]}:{port}"})
            ends.append(f"{site_ids[i]}:{port}")
        spans.append({"id": f"span-{site_ids[a][5:]}-{site_ids[b][5:]}", "a": ends[0], "b": ends[1],
                      "length_km": round(rng.uniform(2.0, 25.0), 1)})
    suffixes = [s[5:] for s in site_ids]
    return {
        "name": f"generated-{nodes}-seed-{seed}",
        "sites": [{"id": s} for s in site_ids],
        "spans": spans,
        "qkd_nodes": [{"id": f"qkd-{n}", "site": s, "interfaces": ifs}
                      for n, s, ifs in zip(suffixes, site_ids, interfaces)],
        "key_managers": [{"id": f"km-{n}", "site": s} for n, s in zip(suffixes, site_ids)],
        "saes": [{"id": f"sae-{n}", "km": f"km-{n}"} for n in suffixes],
    }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- the twin ------------------------------------------------------------------------------

def build_twin(topology: Topology, clock: Clock | None = None, rng: random.Random | None = None) -> Twin:
    """The digital twin of the topology's fibre plant (no cross-connects yet)."""
    twin = Twin(clock=clock, rng=rng)
    for site in topology.sites:
        twin.add_site(site.id)
    for switch in topology.switches:
        twin.add_switch(switch.id, switch.ports, switch.insertion_loss_db)
    for span in topology.spans:
        twin.add_span(span.id, span.a, span.b, span.length_km, span.attenuation_db_per_km)
    return twin
