"""Deployment files: what one level's process needs to run alone (`qstrata run LEVEL --config
FILE`), as YAML. docs/deployment.md describes the format with a full example.

    level: forwarding                  # devices | connectivity | forwarding | service | orchestrator
    name: forwarding                   # the server's name (default: the level)
    listen: {address: 127.0.0.1, port: 8832, host_key_file: keys/forwarding.key}
    users:                             # who may log in
      - {name: admin, access: read-write, password: ...}
      - {name: monitor, access: read-only, authorized_keys: ["ssh-ed25519 AAAA..."]}
    state_dir: forwarding              # datastores (default: none kept)
    peers:                             # the southbound servers this level is a client of
      - {name: qkd-quintin, address: 127.0.0.1, port: 8301, user: admin, password: ...,
         host_key: "ssh-ed25519 AAAA..."}
    forwarding: {connectivity: connectivity, km_by_site: {quintin: km-quintin}}

Relative paths are taken from the directory of the file. `load_deployment` checks everything
(types, unknown keys, ports, that files are readable and keys parse, that named peers exist)
and raises one `DeploymentError` listing each problem as `FILE: KEY.PATH: what is wrong`.
`write_deployment` writes the same form back (mode 0600: it may hold passwords).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import yaml

LEVELS = ("devices", "connectivity", "forwarding", "service", "orchestrator", "twin")
FEDERATION_LEVELS = ("federation", "federation-agent")   # the platform; one member domain's agent
LEVELS += FEDERATION_LEVELS
PEER_LEVEL = "federation-peer"
LEVELS += (PEER_LEVEL,)   # one provider's peering agent, with no platform (tools/peering_deploy.py)
ENTANGLEMENT_LEVELS = ("fabric", "entanglement")   # the fabric controller; the entanglement service controller
LEVELS += ENTANGLEMENT_LEVELS
CONTROLLERS = ("connectivity", "forwarding", "service")
READ_WRITE, READ_ONLY, INTENT_WRITER = "read-write", "read-only", "intent-writer"
PLATFORM_ADMIN, ENROLMENT, SERVICE_USER = "admin", "enrolment", "service"   # the platform's accounts


class DeploymentError(ValueError):
    """Every problem of one deployment file; `problems` holds them one by one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Listen:
    address: str
    host_key_file: pathlib.Path | None    # None for the twin service, which speaks HTTP
    port: int | None = None      # None for the devices, whose ports are under devices.ports


@dataclass(frozen=True)
class Login:
    """A user who may log in, and what they may do (read-write, read-only, or for the
    orchestrator intent-writer: manage intents and nothing else)."""

    name: str
    access: str
    password: str | None = None
    password_file: pathlib.Path | None = None
    authorized_keys: tuple[str, ...] = ()
    authorized_keys_file: pathlib.Path | None = None


@dataclass(frozen=True)
class Peer:
    """A southbound NETCONF server, how to log in to it and how to know it is that server."""

    name: str
    address: str
    port: int
    user: str
    password: str | None = None
    password_file: pathlib.Path | None = None
    private_key_file: pathlib.Path | None = None
    host_key: str | None = None          # its public host key, OpenSSH one-line form
    known_hosts: pathlib.Path | None = None


@dataclass(frozen=True)
class DevicePorts:
    netconf: int
    etsi014: int | None = None


@dataclass(frozen=True)
class KeyManagerTls:
    cert_file: pathlib.Path
    key_file: pathlib.Path


@dataclass(frozen=True)
class Etsi014:
    """How the key managers serve ETSI GS QKD 014: HTTPS with client certificates (`ca_file`
    and a certificate per key manager), or plain HTTP with the X-SAE-ID header when
    `insecure_http` (loopback tests only)."""

    insecure_http: bool = False
    ca_file: pathlib.Path | None = None
    key_managers: dict[str, KeyManagerTls] = field(default_factory=dict)


@dataclass(frozen=True)
class TwinPeer:
    """Where the devices reach their network's twin service, and the token they share."""

    address: str
    port: int
    token: str | None = None
    token_file: pathlib.Path | None = None


@dataclass(frozen=True)
class DevicesPart:
    etsi014: Etsi014
    topology: pathlib.Path | None = None   # None: the embedded Madrid network
    speed: float = 1.0
    ports: dict[str, DevicePorts] = field(default_factory=dict)
    twin: TwinPeer | None = None           # None: the devices run a twin service of their own
    run: tuple[str, ...] = ()              # the devices of the topology this process runs; none: all
    workers: int | None = None             # processes to spread them over; None: one per core; 1: this one
    restconf: bool = False                 # every QKD node serves RESTCONF (ETSI GS QKD 015) too


@dataclass(frozen=True)
class TwinPart:
    """The twin service of one network: its plant (the topology), clock and credential."""

    topology: pathlib.Path | None = None
    speed: float = 1.0
    seed: int | None = None
    token: str | None = None
    token_file: pathlib.Path | None = None


@dataclass(frozen=True)
class ForwardingPart:
    connectivity: str                      # the peer that is the connectivity controller
    km_by_site: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServicePart:
    forwarding: str
    connectivity: str | None = None        # read by plan-path for the links that could be built


@dataclass(frozen=True)
class FabricPart:
    """The fabric controller's peers are quantum nodes, and maybe the connectivity controller."""

    connectivity: str | None = None        # asked for the optical paths of links across switches


@dataclass(frozen=True)
class EntanglementPart:
    """The entanglement service controller's peers are quantum nodes and the fabric controller."""

    fabric: str                            # the peer that is the fabric controller, read to plan


@dataclass(frozen=True)
class OrchestratorPart:
    service: str
    forwarding: str
    connectivity: str
    intent_store: pathlib.Path
    entanglement: str | None = None        # the entanglement service controller: entanglement intents
    platform: str | None = None            # the federation platform, as the domain's service user: roaming
    member_id: str | None = None           # the domain's member id there (default: found from its SAEs)


@dataclass(frozen=True)
class PinnedMember:
    """A member domain whose orchestrator the platform asks for segments: the host key the
    administrator pinned for it when admitting it (one of host_key, known_hosts)."""

    id: str
    host_key: str | None = None
    known_hosts: pathlib.Path | None = None


@dataclass(frozen=True)
class FederationPart:
    """The platform's way to its members' orchestrators: its own SSH key, the account it is
    given there, and each member's pinned orchestrator host key."""

    client_key_file: pathlib.Path
    members: tuple[PinnedMember, ...] = ()
    client_user: str = "federation"


@dataclass(frozen=True)
class BorderLinkEntry:
    """One inter-domain link as a member's agent deployment lists it (orchestrator BorderLink)."""

    link_id: str
    local_node: str
    local_interface: int
    peer_member: str
    peer_node: str


@dataclass(frozen=True)
class SaeEntry:
    id: str
    km: str


@dataclass(frozen=True)
class FederationAgentPart:
    """One member domain's federation agent: who it is (member id, name, SSH key), the peers
    that are the platform, its forwarding controller and orchestrator (the other peers are the
    domain's key managers), what it shares (from `topology`, or `border_links` and `saes`), and
    where the platform reaches its Fm endpoint (default: the orchestrator peer's address)."""

    member_id: str
    key_file: pathlib.Path
    platform: str
    forwarding: str
    orchestrator: str
    member_name: str | None = None
    fm_address: str | None = None
    fm_port: int | None = None
    topology: pathlib.Path | None = None
    border_links: tuple[BorderLinkEntry, ...] = ()
    saes: tuple[SaeEntry, ...] = ()
    capacity_share: float = 1.0
    share_with: tuple[str, ...] | None = None     # None: every member
    service_users: tuple[str, ...] = ()           # platform accounts allowed to request for the member
    visitors: bool = False                        # also advertise SAEs of other members attached here (mobility)
    # border key manager (a peer) -> {the key manager across its inter-domain link: its KM-to-KM URL}
    border_key_managers: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class PeeringPart:
    """Who the provider is, who its peer is (the `peer` entry of peers is the peer's agent, which
    this provider logs in to as `member_id` with that entry's private_key_file; the peer logs in
    here as `peer_member_id` with `peer_public_key`), its forwarding controller and orchestrator
    peers (the other peers are its key managers), and what it shares (from `topology`)."""

    member_id: str
    peer: str
    peer_member_id: str
    peer_public_key: str
    forwarding: str
    orchestrator: str
    topology: pathlib.Path
    member_name: str | None = None
    peer_member_name: str | None = None
    capacity_share: float = 1.0
    # border key manager (a peer) -> {the key manager across the link: its KM-to-KM URL}
    border_key_managers: dict[str, dict[str, str]] = field(default_factory=dict)


Part = DevicesPart | ForwardingPart | ServicePart | OrchestratorPart | TwinPart | FederationPart | FederationAgentPart
Part |= FabricPart | EntanglementPart | PeeringPart


@dataclass(frozen=True)
class Deployment:
    level: str
    name: str
    listen: Listen | None                  # None for a federation agent, which serves nothing
    users: tuple[Login, ...]
    peers: tuple[Peer, ...] = ()
    state_dir: pathlib.Path | None = None
    part: Part | None = None               # the section named after the level

    def peer(self, name: str) -> Peer:
        return next(p for p in self.peers if p.name == name)

    def role_peers(self) -> set[str]:
        """The peers the level section names (the other peers are the level's devices)."""
        return {value for key, value in dataclasses.asdict(self.part).items()
                if key in ("connectivity", "forwarding", "service", "platform", "orchestrator", "fabric",
                           "entanglement", "peer") and value} \
            if self.part else set()

    def device_peers(self) -> list[Peer]:
        roles = self.role_peers()
        return [p for p in self.peers if p.name not in roles]

    def access(self, kind: str) -> tuple[str, ...]:
        return tuple(u.name for u in self.users if u.access == kind)


_PART_TYPES = {"devices": DevicesPart, "forwarding": ForwardingPart, "service": ServicePart,
               "orchestrator": OrchestratorPart, "fabric": FabricPart, "entanglement": EntanglementPart}
_OPTIONAL_PARTS = ("devices", "fabric")   # levels whose section may be left out


# --- reading --------------------------------------------------------------------------------

class _Reader:
    """Walks the parsed YAML, collecting every problem with its key path."""

    def __init__(self, source: pathlib.Path) -> None:
        self.source = source
        self.base = source.parent
        self.problems: list[str] = []

    def fail(self, path: str, what: str) -> None:
        self.problems.append(f"{self.source}: {path}: {what}")

    def mapping(self, value: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict | None:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {_kind(value)}")
            return None
        for key in value:
            if key not in required and key not in optional:
                self.fail(_join(path, key), f"unknown key (expected: {', '.join(required + optional)})")
        for key in required:
            if key not in value:
                self.fail(_join(path, key), "missing")
        return value

    def string(self, parent: dict, key: str, path: str) -> str | None:
        if key not in parent:
            return None
        value = parent[key]
        if not isinstance(value, str) or not value.strip():
            self.fail(_join(path, key), f"must be a non-empty string, got {_kind(value)}")
            return None
        return value

    def flag(self, parent: dict, key: str, path: str) -> bool | None:
        """A true/false key, false when left out; None (a problem noted) when it is neither."""
        value = parent.get(key, False)
        if not isinstance(value, bool):
            self.fail(_join(path, key), f"must be true or false, got {_kind(value)}")
            return None
        return value

    def port(self, parent: dict, key: str, path: str, allow_zero: bool = False) -> int | None:
        if key not in parent:
            return None
        value = parent[key]
        low = 0 if allow_zero else 1
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(_join(path, key), f"must be a port number, got {_kind(value)}")
        elif not low <= value <= 65535:
            self.fail(_join(path, key), f"bad port {value}: must be within {low}..65535")
        else:
            return value
        return None

    def file(self, parent: dict, key: str, path: str) -> pathlib.Path | None:
        """A readable file (a relative path is taken from the deployment file's directory)."""
        where = self.path(parent, key, path)
        if where is None:
            return None
        if not where.is_file():
            self.fail(_join(path, key), f"no such file: {where}")
        elif not os.access(where, os.R_OK):
            self.fail(_join(path, key), f"unreadable file: {where}")
        else:
            return where
        return None

    def path(self, parent: dict, key: str, path: str) -> pathlib.Path | None:
        text = self.string(parent, key, path)
        return None if text is None else pathlib.Path(os.path.normpath(self.base / text))

    def public_key(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"must be an OpenSSH public key line, got {_kind(value)}")
            return None
        try:
            asyncssh.import_public_key(value.strip())
        except (asyncssh.KeyImportError, ValueError) as error:
            self.fail(path, f"not an OpenSSH public key line ('ssh-ed25519 AAAA...'): {error}")
            return None
        return value.strip()

    def private_key_file(self, parent: dict, key: str, path: str) -> pathlib.Path | None:
        where = self.file(parent, key, path)
        if where is not None:
            try:
                asyncssh.read_private_key(str(where))
            except (asyncssh.KeyImportError, ValueError, OSError) as error:
                self.fail(_join(path, key), f"not an OpenSSH private key ({where}): {error}")
                return None
        return where

    def names(self, items: list, path: str, kind: str) -> None:
        seen: set[str] = set()
        for index, item in enumerate(items):
            name = getattr(item, "name", None)
            if name in seen:
                self.fail(f"{path}[{index}].name", f"{kind} {name!r} appears twice")
            seen.add(name)


def load_deployment(path: pathlib.Path | str) -> Deployment:
    """The deployment in `path`, checked; DeploymentError lists every problem."""
    source = pathlib.Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise DeploymentError([f"{source}: cannot read: {error.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DeploymentError([f"{source}: not valid YAML: {error}"]) from None
    reader = _Reader(source)
    deployment = _deployment(reader, data)
    if reader.problems or deployment is None:
        raise DeploymentError(reader.problems or [f"{source}: not a deployment"])
    return deployment


def _deployment(r: _Reader, data: Any) -> Deployment | None:
    if not isinstance(data, dict):
        r.fail("(top)", f"must be a mapping with level, listen and users, got {_kind(data)}")
        return None
    level = data.get("level")
    if level not in LEVELS:
        r.fail("level", "missing" if level is None else f"must be one of {', '.join(LEVELS)}, got {level!r}")
        return None
    if level == "twin":
        return _twin_deployment(r, data)
    if level == PEER_LEVEL:
        return _peer_deployment(r, data)
    if level in FEDERATION_LEVELS:
        return (_platform_deployment if level == "federation" else _agent_deployment)(r, data)
    # The orchestrator keeps its datastores with its intent store (orchestrator.intent_store).
    optional = ("name",) + (() if level == "orchestrator" else ("state_dir",)) \
        + (() if level == "devices" else ("peers",))
    required: tuple[str, ...] = ("level", "listen", "users")
    if level in _PART_TYPES:
        if level in _OPTIONAL_PARTS:
            optional += (level,)
        else:
            required += (level,)
    else:
        optional += (level,)
    r.mapping(data, "(top)", required, optional)
    name = r.string(data, "name", "") or level
    listen = _listen(r, data.get("listen"), level) if "listen" in data else None
    users = _users(r, data.get("users"), level) if "users" in data else ()
    peers = _peers(r, data.get("peers", [])) if level != "devices" else ()
    state_dir = r.path(data, "state_dir", "")
    raw_peers = data.get("peers", [])
    named = {item["name"] for item in raw_peers if isinstance(item, dict) and isinstance(item.get("name"), str)} \
        if isinstance(raw_peers, list) else set()
    part = _part(r, level, data.get(level, {} if level in _OPTIONAL_PARTS else None), peers, named) \
        if level in _PART_TYPES and (level in _OPTIONAL_PARTS or level in data) else None
    if level == "connectivity" and data.get("connectivity") not in (None, {}):
        r.fail("connectivity", "the connectivity controller has no settings of its own: its peers are its devices")
    if listen is None or r.problems:
        return None
    return Deployment(level, name, listen, users, peers, state_dir, part)


def _listen(r: _Reader, value: Any, level: str) -> Listen | None:
    devices = level == "devices"
    m = r.mapping(value, "listen", ("address", "host_key_file") + (() if devices else ("port",)),
                  ("port",) if devices else ())
    if m is None:
        return None
    if devices and "port" in m:
        r.fail("listen.port", "not used by the devices level: each device's ports are under devices.ports")
    address = r.string(m, "address", "listen")
    port = None if devices else r.port(m, "port", "listen", allow_zero=True)
    key = r.private_key_file(m, "host_key_file", "listen")
    if address is None or key is None or (not devices and port is None):
        return None
    return Listen(address, key, port)


def _users(r: _Reader, value: Any, level: str) -> tuple[Login, ...]:
    if not isinstance(value, list) or not value:
        r.fail("users", f"must be a non-empty list of users, got {_kind(value)}")
        return ()
    allowed = (PLATFORM_ADMIN, ENROLMENT, SERVICE_USER) if level == "federation" else \
        (PLATFORM_ADMIN, SERVICE_USER) if level == PEER_LEVEL else \
        (READ_WRITE, READ_ONLY) + ((INTENT_WRITER,) if level == "orchestrator" else ())
    users = []
    for index, item in enumerate(value):
        path = f"users[{index}]"
        m = r.mapping(item, path, ("name", "access"),
                      ("password", "password_file", "authorized_keys", "authorized_keys_file"))
        if m is None:
            continue
        name = r.string(m, "name", path)
        access = m.get("access")
        if "access" in m and access not in allowed:
            r.fail(f"{path}.access", f"must be one of {', '.join(allowed)}, got {access!r}")
        password = r.string(m, "password", path)
        password_file = r.file(m, "password_file", path)
        keys: list[str] = []
        if "authorized_keys" in m:
            if not isinstance(m["authorized_keys"], list):
                r.fail(f"{path}.authorized_keys", f"must be a list of OpenSSH public key lines, "
                                                  f"got {_kind(m['authorized_keys'])}")
            else:
                keys = [k for i, line in enumerate(m["authorized_keys"])
                        if (k := r.public_key(line, f"{path}.authorized_keys[{i}]")) is not None]
        keys_file = r.file(m, "authorized_keys_file", path)
        if not any(k in m for k in ("password", "password_file", "authorized_keys", "authorized_keys_file")):
            r.fail(path, "no way to log in: give password, password_file, authorized_keys or authorized_keys_file")
        if name is not None and access in allowed:
            users.append(Login(name, access, password, password_file, tuple(keys), keys_file))
    r.names(users, "users", "user")
    return tuple(users)


def _peers(r: _Reader, value: Any) -> tuple[Peer, ...]:
    if not isinstance(value, list):
        r.fail("peers", f"must be a list of peers, got {_kind(value)}")
        return ()
    peers = []
    for index, item in enumerate(value):
        path = f"peers[{index}]"
        m = r.mapping(item, path, ("name", "address", "port", "user"),
                      ("password", "password_file", "private_key_file", "host_key", "known_hosts"))
        if m is None:
            continue
        name, address, user = (r.string(m, key, path) for key in ("name", "address", "user"))
        port = r.port(m, "port", path)
        password = r.string(m, "password", path)
        password_file = r.file(m, "password_file", path)
        private_key_file = r.private_key_file(m, "private_key_file", path)
        if not any(k in m for k in ("password", "password_file", "private_key_file")):
            r.fail(path, "no way to log in: give password, password_file or private_key_file")
        host_key = r.public_key(m["host_key"], f"{path}.host_key") if "host_key" in m else None
        known_hosts = r.file(m, "known_hosts", path)
        pins = [k for k in ("host_key", "known_hosts") if k in m]
        if not pins:
            r.fail(path, "its host key is not pinned: give host_key (its OpenSSH public key line) "
                         "or known_hosts (a file)")
        elif len(pins) == 2:
            r.fail(path, "give host_key or known_hosts, not both")
        if None not in (name, address, user, port):
            peers.append(Peer(name, address, port, user, password, password_file, private_key_file, host_key,
                              known_hosts))
    r.names(peers, "peers", "peer")
    return tuple(peers)


def _part(r: _Reader, level: str, value: Any, peers: tuple[Peer, ...], names: set[str]) -> Part | None:
    """The level's own section; `names`: those of every entry of peers, complete or not."""
    if level == "devices":
        return _devices_part(r, {} if value is None else value)

    def role(m: dict, key: str) -> str | None:
        return _role(r, m, key, level, names)

    if level == "forwarding":
        m = r.mapping(value, level, ("connectivity",), ("km_by_site",))
        if m is None:
            return None
        km_by_site = m.get("km_by_site", {})
        if not isinstance(km_by_site, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in km_by_site.items()):
            r.fail(f"{level}.km_by_site", "must map each site (a string) to its key manager's id (a string)")
            km_by_site = {}
        connectivity = role(m, "connectivity")
        return ForwardingPart(connectivity, dict(km_by_site)) if connectivity else None
    if level == "service":
        m = r.mapping(value, level, ("forwarding",), ("connectivity",))
        if m is None:
            return None
        forwarding, connectivity = role(m, "forwarding"), role(m, "connectivity")
        return ServicePart(forwarding, connectivity) if forwarding else None
    if level == "fabric":
        m = r.mapping(value, level, (), ("connectivity",))
        return FabricPart(role(m, "connectivity")) if m is not None else None
    if level == "entanglement":
        m = r.mapping(value, level, ("fabric",), ())
        fabric = role(m, "fabric") if m is not None else None
        return EntanglementPart(fabric) if fabric else None
    m = r.mapping(value, level, ("service", "forwarding", "connectivity", "intent_store"),
                  ("entanglement", "platform", "member_id"))
    if m is None:
        return None
    strata = [role(m, key) for key in ("service", "forwarding", "connectivity")]
    entanglement, platform = role(m, "entanglement"), role(m, "platform")
    named = {key: what for key, what in (("entanglement", "its entanglement service controller"),
                                         ("platform", "the federation platform")) if key in m}
    for index, peer in enumerate(peers):
        if peer.name not in strata + [entanglement, platform]:
            also = "".join(f" and {what}" for what in named.values())
            r.fail(f"peers[{index}]", f"the orchestrator's peers are its three controllers{also}; {peer.name!r} is "
                                      "none of orchestrator.service, .forwarding, .connectivity"
                                      + "".join(f", .{key}" for key in named))
    store = r.path(m, "intent_store", level)
    member_id = r.string(m, "member_id", level)
    if None in strata or store is None:
        return None
    return OrchestratorPart(*strata, store, entanglement, platform, member_id)


def _platform_deployment(r: _Reader, data: dict) -> Deployment | None:
    """The federation platform: it listens, lets in its accounts (one administrator, the
    enrolment account `enrol`, service users), keeps its state, and reaches the members'
    orchestrators with its own key, each host key pinned under federation.members."""
    r.mapping(data, "(top)", ("level", "listen", "users", "federation"), ("name", "state_dir"))
    name = r.string(data, "name", "") or "federation"
    listen = _listen(r, data.get("listen"), "federation") if "listen" in data else None
    users = _users(r, data.get("users"), "federation") if "users" in data else ()
    admins = [u.name for u in users if u.access == PLATFORM_ADMIN]
    if users and len(admins) != 1:
        r.fail("users", f"the platform has exactly one user with access {PLATFORM_ADMIN}, got "
                        f"{len(admins)}{': ' + ', '.join(admins) if admins else ''}")
    for index, login in enumerate(users):
        if login.access == ENROLMENT and login.name != "enrol":
            r.fail(f"users[{index}].name", f"the enrolment account is named 'enrol' (what applicants log in as), "
                                           f"not {login.name!r}")
    state_dir = r.path(data, "state_dir", "")
    part = None
    m = r.mapping(data.get("federation"), "federation", ("client_key_file",), ("client_user", "members")) \
        if "federation" in data else None
    if m is not None:
        key = r.private_key_file(m, "client_key_file", "federation")
        client_user = r.string(m, "client_user", "federation") or "federation"
        members = []
        raw = m.get("members", [])
        if not isinstance(raw, list):
            r.fail("federation.members", f"must be a list of members (id and host_key or known_hosts), "
                                         f"got {_kind(raw)}")
            raw = []
        for index, item in enumerate(raw):
            path = f"federation.members[{index}]"
            e = r.mapping(item, path, ("id",), ("host_key", "known_hosts"))
            if e is None:
                continue
            member = r.string(e, "id", path)
            pinned = r.public_key(e["host_key"], f"{path}.host_key") if "host_key" in e else None
            known_hosts = r.file(e, "known_hosts", path)
            if ("host_key" in e) == ("known_hosts" in e):
                r.fail(path, "pin the member's orchestrator host key: give host_key or known_hosts (exactly one)")
            if member is not None:
                members.append(PinnedMember(member, pinned, known_hosts))
        seen: set[str] = set()
        for index, member in enumerate(members):
            if member.id in seen:
                r.fail(f"federation.members[{index}].id", f"member {member.id!r} appears twice")
            seen.add(member.id)
        part = FederationPart(key, tuple(members), client_user) if key else None
    if r.problems or listen is None or part is None:
        return None
    return Deployment("federation", name, listen, users, (), state_dir, part)


def _agent_deployment(r: _Reader, data: dict) -> Deployment | None:
    """A member domain's federation agent: no listen and no users (it serves nothing), its
    peers (the platform, the domain's forwarding controller and orchestrator, its key
    managers) and the federation-agent section."""
    level = "federation-agent"
    r.mapping(data, "(top)", ("level", "peers", level), ("name", "state_dir"))
    name = r.string(data, "name", "") or level
    peers = _peers(r, data.get("peers", []))
    names = {p.name for p in peers}
    m = r.mapping(data.get(level), level, ("member_id", "key_file", "platform", "forwarding", "orchestrator"),
                  ("member_name", "fm_address", "fm_port", "topology", "border_links", "saes", "capacity_share",
                   "share_with", "service_users", "visitors", "border_key_managers")) if level in data else None
    if m is None:
        return None

    def role(key: str) -> str | None:
        return _role(r, m, key, level, names)

    member_id = r.string(m, "member_id", level)
    key_file = r.private_key_file(m, "key_file", level)
    platform, forwarding, orchestrator = role("platform"), role("forwarding"), role("orchestrator")
    platform_peer = next((p for p in peers if p.name == platform), None)
    if platform_peer is not None and platform_peer.password is None and platform_peer.password_file is None:
        index = [p.name for p in peers].index(platform)
        r.fail(f"peers[{index}]", "the platform peer is the enrolment account an applicant logs in as: give its "
                                  "password or password_file")
    member_name = r.string(m, "member_name", level)
    fm_address, fm_port = r.string(m, "fm_address", level), r.port(m, "fm_port", level)
    share = _capacity_share(r, m, level)
    share_with = _strings(r, m, "share_with", level)
    service_users = _strings(r, m, "service_users", level) or ()
    visitors = r.flag(m, "visitors", level)
    topology = r.file(m, "topology", level)
    listed = [k for k in ("border_links", "saes") if k in m]
    if "topology" in m and listed:
        r.fail(f"{level}.{listed[0]}", "give the topology or list border_links and saes, not both")
    elif "topology" not in m and not listed:
        r.fail(level, "say what the member shares: topology (its border links and SAEs are derived from it), "
                      "or border_links and saes")
    links = []
    for index, item in enumerate(_list(r, m, "border_links", level)):
        path = f"{level}.border_links[{index}]"
        e = r.mapping(item, path, ("link_id", "local_node", "local_interface", "peer_member", "peer_node"), ())
        if e is None:
            continue
        texts = [r.string(e, key, path) for key in ("link_id", "local_node", "peer_member", "peer_node")]
        interface = e.get("local_interface")
        if isinstance(interface, bool) or not isinstance(interface, int) or interface < 0:
            r.fail(f"{path}.local_interface", f"must be an interface number (>= 0), got {_kind(interface)}")
        elif None not in texts:
            links.append(BorderLinkEntry(texts[0], texts[1], interface, texts[2], texts[3]))
    saes = []
    for index, item in enumerate(_list(r, m, "saes", level)):
        path = f"{level}.saes[{index}]"
        e = r.mapping(item, path, ("id", "km"), ())
        if e is not None and (sae := r.string(e, "id", path)) and (km := r.string(e, "km", path)):
            saes.append(SaeEntry(sae, km))
    border_kms = _border_key_managers(r, m, level, names - {platform, forwarding, orchestrator})
    if topology is not None and member_id is not None:
        _check_member_topology(r, topology, member_id, [p for p in peers if p.name not in
                                                        (platform, forwarding, orchestrator)])
    if r.problems or None in (member_id, key_file, platform, forwarding, orchestrator):
        return None
    return Deployment(level, name, None, (), peers, r.path(data, "state_dir", ""), FederationAgentPart(
        member_id, key_file, platform, forwarding, orchestrator, member_name, fm_address, fm_port, topology,
        tuple(links), tuple(saes), share, share_with, tuple(service_users), bool(visitors), border_kms))


def _peer_deployment(r: _Reader, data: dict) -> Deployment | None:
    """A federation-peer file: one provider's peering agent, with no platform."""
    level = PEER_LEVEL
    r.mapping(data, "(top)", ("level", "listen", "users", "peers", level), ("name", "state_dir"))
    name = r.string(data, "name", "") or level
    listen = _listen(r, data.get("listen"), level) if "listen" in data else None
    users = _users(r, data.get("users"), level) if "users" in data else ()
    peers = _peers(r, data.get("peers", []))
    names = {p.name: p for p in peers}
    state_dir = r.path(data, "state_dir", "")
    m = r.mapping(data.get(level), level, ("member_id", "peer", "peer_member_id", "peer_public_key", "forwarding",
                                           "orchestrator", "topology"),
                  ("member_name", "peer_member_name", "capacity_share", "border_key_managers")) \
        if level in data else None
    if users and not any(u.access == PLATFORM_ADMIN for u in users):
        r.fail("users", f"the peering agent needs a user with access {PLATFORM_ADMIN} (its operator)")
    if m is None:
        return None

    def role(key: str) -> str | None:
        return _role(r, m, key, level, names)

    member_id, peer_member = r.string(m, "member_id", level), r.string(m, "peer_member_id", level)
    peer, forwarding, orchestrator = role("peer"), role("forwarding"), role("orchestrator")
    if member_id is not None and member_id == peer_member:
        r.fail(f"{level}.peer_member_id", f"a provider does not peer with itself ({member_id})")
    for index, login in enumerate(users):
        if login.name in (member_id, peer_member):
            r.fail(f"users[{index}].name", f"{login.name!r} is a member's name: the peer logs in as its member_id")
    peer_key = r.public_key(m["peer_public_key"], f"{level}.peer_public_key") if "peer_public_key" in m else None
    if peer in names:
        index, entry = list(names).index(peer), names[peer]
        if member_id is not None and entry.user != member_id:
            r.fail(f"peers[{index}].user", f"the peer's agent knows this provider as its member_id {member_id!r}, "
                                           f"not {entry.user!r}")
        if entry.private_key_file is None:
            r.fail(f"peers[{index}]", "the peer's agent lets this provider in by its key: give private_key_file "
                                      "(the provider's key, whose public line the peer's deployment holds)")
    share = _capacity_share(r, m, level)
    topology = r.file(m, "topology", level)
    if topology is not None and member_id and peer_member:
        _check_peer_topology(r, topology, member_id, peer_member,
                        [p for p in peers if p.name not in (peer, forwarding, orchestrator)])
    border_kms = _border_key_managers(r, m, level, set(names) - {peer, forwarding, orchestrator})
    if r.problems or listen is None or None in (member_id, peer_member, peer_key, peer, forwarding, orchestrator,
                                                topology):
        return None
    return Deployment(level, name, listen, users, peers, state_dir, PeeringPart(
        member_id, peer, peer_member, peer_key, forwarding, orchestrator, topology,
        r.string(m, "member_name", level), r.string(m, "peer_member_name", level), share, border_kms))


def _role(r: _Reader, m: dict, key: str, level: str, names) -> str | None:
    """The peer a level's section names for a role (`key`), which must be one of peers' `names`."""
    name = r.string(m, key, level)
    if name is not None and name not in names:
        r.fail(f"{level}.{key}", f"no peer named {name!r} in peers (peers: {', '.join(sorted(names)) or 'none'})")
    return name


def _capacity_share(r: _Reader, m: dict, level: str) -> float:
    """The share of a border link's capacity a member offers its federation (0..1, default 1)."""
    share = m.get("capacity_share", 1.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        r.fail(f"{level}.capacity_share", f"must be a number within 0..1, got {_kind(share)}")
        return 1.0
    return float(share)


def _border_key_managers(r: _Reader, m: dict, level: str, key_managers: set[str]) -> dict[str, dict[str, str]]:
    """border_key_managers: each border key manager (one of `key_managers`) -> {the key manager
    across its inter-domain link: that one's KM-to-KM URL}."""
    raw = m.get("border_key_managers", {})
    if not isinstance(raw, dict):
        r.fail(f"{level}.border_key_managers", f"must map each border key manager to its peers' URLs, got "
                                               f"{_kind(raw)}")
        return {}
    out = {}
    for km, far in raw.items():
        path = f"{level}.border_key_managers.{km}"
        if km not in key_managers:
            r.fail(path, "not one of the key managers in peers")
        elif not isinstance(far, dict) or not all(isinstance(k, str) and isinstance(v, str) and
                                                  v.startswith(("https://", "http://")) for k, v in far.items()):
            r.fail(path, "must map each key manager across the link to its KM-to-KM URL (https://HOST:PORT)")
        else:
            out[str(km)] = dict(far)
    return out


def _check_peer_topology(r: _Reader, topology_file: pathlib.Path, member_id: str, peer_member: str, key_managers: list) -> None:
    """Both members are domains of the topology, joined by an inter-domain link; the other
    peers are the provider's key managers."""
    from devices.topology import TopologyError, load_topology

    level = PEER_LEVEL
    try:
        topology = load_topology(topology_file)
    except TopologyError as error:
        r.fail(f"{level}.topology", f"not a valid topology: {error.problems[0]}")
        return
    for key, member in (("member_id", member_id), ("peer_member_id", peer_member)):
        if member not in topology.domains:
            r.fail(f"{level}.{key}", f"no domain {member!r} in topology {topology.name} "
                                     f"(domains: {', '.join(topology.domains) or 'none'})")
            return
    if not any({topology.domain_of(s.a.node), topology.domain_of(s.b.node)} == {member_id, peer_member}
               for s in topology.inter_domain_spans()):
        r.fail(f"{level}.topology", f"no inter-domain link joins {member_id} and {peer_member} in topology "
                                    f"{topology.name}")
    own = {km.id for km in topology.domain_part(member_id).key_managers}
    for peer in key_managers:
        if peer.name not in own:
            r.fail("peers", f"{peer.name!r} is none of {level}.peer, .forwarding, .orchestrator, nor a key manager "
                            f"of domain {member_id} ({', '.join(sorted(own))})")


def _list(r: _Reader, m: dict, key: str, path: str) -> list:
    value = m.get(key, [])
    if not isinstance(value, list):
        r.fail(f"{path}.{key}", f"must be a list, got {_kind(value)}")
        return []
    return value


def _strings(r: _Reader, m: dict, key: str, path: str) -> tuple[str, ...] | None:
    """An optional list of non-empty strings (None when absent)."""
    if key not in m:
        return None
    value = m[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        r.fail(f"{path}.{key}", f"must be a list of names, got {_kind(value)}")
        return None
    return tuple(value)


def _check_member_topology(r: _Reader, topology_file: pathlib.Path, member_id: str, key_managers: list) -> None:
    """The member is a domain of the topology, and the other peers are its key managers."""
    from devices.topology import TopologyError, load_topology

    try:
        topology = load_topology(topology_file)
    except TopologyError as error:
        r.fail("federation-agent.topology", f"not a valid topology: {error.problems[0]}")
        return
    if member_id not in topology.domains:
        r.fail("federation-agent.member_id", f"no domain {member_id!r} in topology {topology.name} "
                                             f"(domains: {', '.join(topology.domains) or 'none'})")
        return
    own = {km.id for km in topology.domain_part(member_id).key_managers}
    for peer in key_managers:
        if peer.name not in own:
            r.fail("peers", f"{peer.name!r} is none of federation-agent.platform, .forwarding, .orchestrator, nor a "
                            f"key manager of domain {member_id} ({', '.join(sorted(own))})")


def _twin_deployment(r: _Reader, data: dict) -> Deployment | None:
    """The twin service: it listens (HTTP, the token its devices share), nothing else."""
    r.mapping(data, "(top)", ("level", "listen", "twin"), ("name",))
    name = r.string(data, "name", "") or "twin"
    listen = r.mapping(data.get("listen"), "listen", ("address", "port"), ())
    address = r.string(listen, "address", "listen") if listen else None
    port = r.port(listen, "port", "listen", allow_zero=True) if listen else None
    m = r.mapping(data.get("twin"), "twin", (), ("topology", "speed", "seed", "token", "token_file"))
    if m is None:
        return None
    speed, seed = m.get("speed", 1.0), m.get("seed")
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0:
        r.fail("twin.speed", f"must be a number > 0, got {speed!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        r.fail("twin.seed", f"must be an integer, got {_kind(seed)}")
    token, token_file = _token(r, m, "twin")
    topology = r.file(m, "topology", "twin")
    if r.problems or address is None or port is None:
        return None
    return Deployment("twin", name, Listen(address, None, port), (),
                      part=TwinPart(topology, float(speed), seed, token, token_file))


def _token(r: _Reader, m: dict, path: str) -> tuple[str | None, pathlib.Path | None]:
    """A bearer token inline or in a file: exactly one."""
    token, token_file = r.string(m, "token", path), r.file(m, "token_file", path)
    if ("token" in m) == ("token_file" in m):
        r.fail(f"{path}.token", "give the token the devices share: token or token_file, not both")
    return token, token_file


def _twin_peer(r: _Reader, value: Any) -> TwinPeer | None:
    m = r.mapping(value, "devices.twin", ("address", "port"), ("token", "token_file"))
    if m is None:
        return None
    address, port = r.string(m, "address", "devices.twin"), r.port(m, "port", "devices.twin")
    token, token_file = _token(r, m, "devices.twin")
    return TwinPeer(address, port, token, token_file) if address and port else None


def _devices_part(r: _Reader, value: Any) -> DevicesPart | None:
    m = r.mapping(value, "devices", ("etsi014",), ("topology", "speed", "ports", "twin", "run", "workers",
                                                   "restconf"))
    if m is None:
        return None
    topology = r.file(m, "topology", "devices")
    speed = m.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0:
        r.fail("devices.speed", f"must be a number > 0, got {speed!r}")
        speed = 1.0
    if "twin" in m and "speed" in m:
        r.fail("devices.speed", "the twin service keeps the clock: give its speed in the twin's deployment")
    twin = _twin_peer(r, m["twin"]) if "twin" in m else None
    run = m.get("run", [])
    if not isinstance(run, list) or not all(isinstance(d, str) for d in run):
        r.fail("devices.run", f"must list device ids, got {_kind(run)}")
        run = []
    workers = m.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        r.fail("devices.workers", f"must be a whole number >= 1 (the processes the devices are spread over; "
                                  f"1: this process alone), got {_kind(workers)}")
    restconf = r.flag(m, "restconf", "devices")
    ports: dict[str, DevicePorts] = {}
    if not isinstance(m.get("ports", {}), dict):
        r.fail("devices.ports", f"must map device ids to their ports, got {_kind(m['ports'])}")
    else:
        for device, entry in m.get("ports", {}).items():
            path = f"devices.ports.{device}"
            e = r.mapping(entry, path, ("netconf",), ("etsi014",))
            if e is None:
                continue
            netconf, etsi014 = r.port(e, "netconf", path, allow_zero=True), r.port(e, "etsi014", path, allow_zero=True)
            if netconf is not None:
                ports[str(device)] = DevicePorts(netconf, etsi014)
    etsi = _etsi014(r, m["etsi014"]) if "etsi014" in m else None
    if r.problems or etsi is None:
        return None
    if topology is not None or "topology" not in m:
        _check_device_ids(r, topology, ports, etsi, run)
    if r.problems:
        return None
    return DevicesPart(etsi, topology, float(speed), ports, twin, tuple(run), workers, restconf)


def _etsi014(r: _Reader, value: Any) -> Etsi014 | None:
    path = "devices.etsi014"
    m = r.mapping(value, path, (), ("insecure_http", "ca_file", "key_managers"))
    if m is None:
        return None
    insecure = r.flag(m, "insecure_http", path)
    if insecure is None:
        return None
    if insecure:
        for key in ("ca_file", "key_managers"):
            if key in m:
                r.fail(f"{path}.{key}", "not used with insecure_http: true (plain HTTP)")
        return Etsi014(insecure_http=True)
    if "ca_file" not in m and "key_managers" not in m:
        r.fail(path, "say how ETSI 014 is served: ca_file and key_managers (HTTPS with client certificates), "
                     "or insecure_http: true (plain HTTP with the X-SAE-ID header, loopback tests only)")
        return None
    if "ca_file" not in m:   # key_managers may be left out: a network without key managers (checked below)
        r.fail(f"{path}.ca_file", "missing")
    ca = r.file(m, "ca_file", path)
    managers: dict[str, KeyManagerTls] = {}
    if "key_managers" in m and not isinstance(m["key_managers"], dict):
        r.fail(f"{path}.key_managers", f"must map key manager ids to their cert_file and key_file, "
                                       f"got {_kind(m['key_managers'])}")
    else:
        for km, entry in m.get("key_managers", {}).items():
            where = f"{path}.key_managers.{km}"
            e = r.mapping(entry, where, ("cert_file", "key_file"), ())
            if e is not None:
                cert, key = r.file(e, "cert_file", where), r.file(e, "key_file", where)
                if cert and key:
                    managers[str(km)] = KeyManagerTls(cert, key)
    return Etsi014(False, ca, managers)


def _check_device_ids(r: _Reader, topology_file: pathlib.Path | None, ports: dict[str, DevicePorts],
                      etsi: Etsi014, run: list[str] = ()) -> None:
    """Every device named under devices.ports, devices.etsi014 and devices.run is one of the
    topology's; only the key managers this process runs need certificates."""
    from devices.host import device_builders
    from devices.key_manager import KeyManagerDevice
    from devices.topology import TopologyError, default_topology, load_topology

    try:
        topology = load_topology(topology_file) if topology_file else default_topology()
    except TopologyError as error:
        r.fail("devices.topology", f"not a valid topology: {error.problems[0]}")
        return
    kinds = {device_id: build.func for device_id, build in device_builders(topology, None)}
    for index, device in enumerate(run):
        if device not in kinds:
            r.fail(f"devices.run[{index}]", f"no such device in topology {topology.name}")
    managers = sorted(d for d, cls in kinds.items() if issubclass(cls, KeyManagerDevice) and (not run or d in run))
    for device, entry in ports.items():
        if device not in kinds:
            r.fail(f"devices.ports.{device}", f"no such device in topology {topology.name}")
        elif entry.etsi014 is not None and not issubclass(kinds[device], KeyManagerDevice):
            r.fail(f"devices.ports.{device}.etsi014", "only a key manager serves ETSI 014")
    if not etsi.insecure_http:
        for km in managers:
            if km not in etsi.key_managers:
                r.fail(f"devices.etsi014.key_managers.{km}", "missing: every key manager needs a certificate")
        for km in etsi.key_managers:
            if km not in kinds or not issubclass(kinds[km], KeyManagerDevice):
                r.fail(f"devices.etsi014.key_managers.{km}", f"no such key manager in topology {topology.name}")


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path and path != "(top)" else str(key)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the string {value!r}", bool: f"{value}".lower(),
            int: f"the number {value}", float: f"the number {value}"}.get(type(value), type(value).__name__)


# --- writing --------------------------------------------------------------------------------

def deployment_data(deployment: Deployment, base: pathlib.Path) -> dict:
    """The YAML form of a deployment; paths under `base` or its parent are written relative to `base`."""
    def clean(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: clean(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if not _is_default(getattr(value, f.name), f)}
        if isinstance(value, pathlib.Path):
            # relative when beside the file (in its directory or the one above), so that the
            # whole tree may move
            return os.path.relpath(value, base) if value.is_relative_to(base.parent) else str(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [clean(v) for v in value]
        return value

    if deployment.level == "federation-agent":   # serves nothing: no listen, no users
        return {"level": deployment.level, "name": deployment.name, "peers": clean(deployment.peers),
                deployment.level: clean(deployment.part)}
    if deployment.level == "twin":
        return {"level": "twin", "name": deployment.name,
                "listen": {"address": deployment.listen.address, "port": deployment.listen.port},
                "twin": clean(deployment.part)}
    data: dict[str, Any] = {"level": deployment.level, "name": deployment.name,
                            "listen": clean(deployment.listen), "users": clean(deployment.users)}
    if deployment.state_dir is not None:
        data["state_dir"] = clean(deployment.state_dir)
    if deployment.level not in ("devices", "federation"):   # the platform's members register where they are
        data["peers"] = clean(deployment.peers)
    if deployment.part is not None:
        data[deployment.level] = clean(deployment.part)
    return data


def _is_default(value: Any, f: dataclasses.Field) -> bool:
    """Left out of the YAML: an unset optional field (a field without a default is always written)."""
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return False
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return type(value) is type(default) and value == default


def write_deployment(path: pathlib.Path, deployment: Deployment) -> None:
    """Write atomically, readable by this user only (a deployment may hold passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(deployment_data(deployment, path.parent), sort_keys=False, width=120)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(f"# qstrata deployment of the {deployment.level} level (docs/deployment.md)\n{text}")
    os.replace(scratch, path)


# --- what a level is given -------------------------------------------------------------------

def secret(value: str | None, file: pathlib.Path | None) -> str | None:
    """A password given inline or as the first line of a file."""
    if file is not None:
        return file.read_text(encoding="utf-8").splitlines()[0].strip() if file.stat().st_size else ""
    return value


def netconf_users(deployment: Deployment) -> dict:
    """The level's NETCONF users (netconf_core.User), by name."""
    from netconf_core import User

    users = {}
    for login in deployment.users:
        keys = list(login.authorized_keys)
        if login.authorized_keys_file is not None:
            keys += [line.strip() for line in login.authorized_keys_file.read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
        users[login.name] = User(password=secret(login.password, login.password_file), authorized_keys=keys)
    return users


def endpoint(peer: Peer):
    """The netconf_core Endpoint of a peer, its host key pinned."""
    from netconf_core import Endpoint

    return Endpoint(peer.name, peer.address, peer.port, peer.user,
                    password=secret(peer.password, peer.password_file),
                    client_keys=(str(peer.private_key_file),) if peer.private_key_file else None,
                    host_key=peer.host_key, known_hosts=str(peer.known_hosts) if peer.known_hosts else None)


def host_key(deployment: Deployment):
    return asyncssh.read_private_key(str(deployment.listen.host_key_file))
