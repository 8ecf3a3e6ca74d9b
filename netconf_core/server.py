"""The NETCONF server: SSH transport (asyncssh), shared datastores, commit pipeline,
locks, confirmed commit, notifications, NACM, monitoring, and the extension points
through which a device or controller plugs in without touching sessions or framing:

- `on_change(handler)`: `async handler(before, after)` runs before a new running
  configuration takes effect; raising RPCError vetoes it and nothing changes.
- `add_state_provider(provider, path=...)`: `async provider() -> <data> tree` of
  config-false nodes under the top-level nodes `path` names, merged into a <get> whose
  filter can select them (every <get> without `path`).
- `running()`, `datastore(name)`: a datastore's tree, to read only; `replace_running(tree)`:
  a new running configuration through the commit path (change handlers, config-change
  notification); `update_running(change)`: a change the server makes itself, without the
  handlers; `save_startup()`: startup becomes a copy of running.
- `set_access_policy(policy)`: who may read, write and receive what, per session (default:
  NACM; see netconf_core.extension.AccessPolicy).
- `add_rpc(path, handler)`: `async handler(session, input, context)` for a YANG RPC
  ("/module:name") or action (its schema path); returns output child elements or None.
- `notify(element)`: send a YANG notification to the subscribed sessions (and to the
  `subscribe_events` listeners: RESTCONF streams).
"""
from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import pathlib
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import asyncssh
import libyang
from _libyang import ffi, lib
from lxml import etree

from . import filters
from .datastore import DATASTORES, Datastores, PendingRecord, empty_tree, merge_state
from .errors import RPCError
from .extension import AccessPolicy, NacmAccess, TopNode, filter_selects, may_select, provider_paths
from .nacm import Nacm, NacmConfigError, NacmCounters
from .notifications import ReplayBuffer, Event, now
from .schema import WD_FLAGS, Schema
from .ssh import (SERVER_OPTIONS, Listener, NetconfSubsystemChannel, TransportLimits, persistent_host_key,
                  public_key_line)
from .session import BASE_10, BASE_11, Session
from .sshd import SshdHandoff
from .ns import (BASE, DEFAULT_ATTR, MONITORING, NACM, NC_NOTIFICATIONS, NETMOD_NOTIFICATION, SUBSCRIBED_NOTIFICATIONS,
                 WITH_DEFAULTS, YANG_LIBRARY)
from .push import PushManager, config_change_edits

log = logging.getLogger(__name__)

CAPABILITIES = [
    BASE_10,
    BASE_11,
    "urn:ietf:params:netconf:capability:writable-running:1.0",
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
    "urn:ietf:params:netconf:capability:validate:1.0",
    "urn:ietf:params:netconf:capability:validate:1.1",
    "urn:ietf:params:netconf:capability:startup:1.0",
    "urn:ietf:params:netconf:capability:xpath:1.0",
    "urn:ietf:params:netconf:capability:with-defaults:1.0?basic-mode=explicit"
    "&also-supported=report-all,report-all-tagged,trim",
    "urn:ietf:params:netconf:capability:notification:1.0",
    "urn:ietf:params:netconf:capability:interleave:1.0",
]

# YANG 1.1 modules announced in ietf-yang-library only (see capabilities()): YANG-Push's, and those
# libyang implements for the leafrefs of ietf-subscribed-notifications (configured subscriptions'
# source interface and VRF, which the engine does not offer).
HELLO_HIDDEN_MODULES = frozenset({"ietf-subscribed-notifications", "ietf-yang-push", "ietf-interfaces", "ietf-ip",
                                  "ietf-network-instance"})

ChangeHandler = Callable[[etree._Element, etree._Element], Awaitable[None]]
StateProvider = Callable[..., Awaitable[etree._Element | None]]  # () or, added with_filter, (filter)
RpcHandler = Callable[[Session, etree._Element, etree._Element | None], Awaitable[list | None]]


@dataclass
class User:
    """A NETCONF user: a password, authorized public keys (OpenSSH format), or both."""

    password: str | None = None
    authorized_keys: list[str] = field(default_factory=list)


# What a read-only user may run: operations that only read, or end the user's own session.
READ_ONLY_OPERATIONS = (("ietf-netconf", "get"), ("ietf-netconf", "get-config"), ("ietf-netconf", "close-session"),
                        ("ietf-netconf-monitoring", "get-schema"), ("notifications", "create-subscription"),
                        ("ietf-subscribed-notifications", "establish-subscription"),
                        ("ietf-subscribed-notifications", "modify-subscription"),
                        ("ietf-subscribed-notifications", "delete-subscription"),
                        ("ietf-yang-push", "resync-subscription"))


@dataclass(frozen=True)
class SubtreeWriters:
    """Users who may read what read-only users read, and create, change and delete one
    subtree of the configuration, nothing else (not the access rules, not other RPCs)."""

    users: tuple[str, ...]
    path: str  # a NACM node-instance-identifier, e.g. "/qi-intent:intents"
    namespaces: dict[str, str]  # the path's prefixes


def standard_nacm(read_write: list[str], read_only: list[str],
                  read_only_rpcs: tuple[tuple[str, str], ...] = (),
                  subtree_writers: SubtreeWriters | None = None) -> etree._Element:
    """A NACM configuration with two groups: `read-write` may do everything; `read-only` may
    read, subscribe and fetch schemas, and run the model RPCs named in `read_only_rpcs`
    ((module, rpc) pairs that change nothing), but not write, run other RPCs nor actions.
    With `subtree_writers`, a third group `subtree-writers` (see SubtreeWriters)."""
    n = lambda tag: f"{{{NACM}}}{tag}"
    nacm = etree.Element(n("nacm"), nsmap={None: NACM})
    etree.SubElement(nacm, n("enable-nacm")).text = "true"
    groups = etree.SubElement(nacm, n("groups"))
    members = [("read-write", read_write), ("read-only", read_only)]
    if subtree_writers is not None:
        members.append(("subtree-writers", list(subtree_writers.users)))
    for name, users in members:
        group = etree.SubElement(groups, n("group"))
        etree.SubElement(group, n("name")).text = name
        for user in users:
            etree.SubElement(group, n("user-name")).text = user

    def rule(rule_list, name, module, access, action, rpc=None, path=None):
        entry = etree.SubElement(rule_list, n("rule"))
        etree.SubElement(entry, n("name")).text = name
        etree.SubElement(entry, n("module-name")).text = module
        if rpc is not None:
            etree.SubElement(entry, n("rpc-name")).text = rpc
        if path is not None:
            etree.SubElement(entry, n("path"), nsmap=path.namespaces).text = path.path
        etree.SubElement(entry, n("access-operations")).text = access
        etree.SubElement(entry, n("action")).text = action

    def rule_list(group):
        entry = etree.SubElement(nacm, n("rule-list"))
        etree.SubElement(entry, n("name")).text = group
        etree.SubElement(entry, n("group")).text = group
        return entry

    rule(rule_list("read-write"), "permit-all", "*", "*", "permit")
    limited = [("read-only", READ_ONLY_OPERATIONS + tuple(read_only_rpcs))]
    if subtree_writers is not None:
        limited.append(("subtree-writers", READ_ONLY_OPERATIONS + tuple(read_only_rpcs)
                        + (("ietf-netconf", "edit-config"),)))
    for group, operations in limited:
        entries = rule_list(group)
        for module, rpc in operations:
            rule(entries, f"allow-{module}-{rpc}", module, "exec", "permit", rpc=rpc)
        if group == "subtree-writers":
            rule(entries, "allow-subtree", "*", "create update delete", "permit", path=subtree_writers)
        # No rule type: covers the other RPCs (exec), actions (exec on data nodes) and every write.
        rule(entries, "deny-changes", "*", "create update delete exec", "deny")
    return nacm


@dataclass
class PendingConfirm:
    """A confirmed commit waiting for its confirmation (RFC 6241 section 8.4)."""

    backup: etree._Element  # the running configuration to go back to
    deadline: float  # wall-clock (time.time()): it survives a restart
    session_id: int  # the session that owns it; 0 for one left by the server's last run
    persist: str | None
    timer: asyncio.TimerHandle | None = None
    reverting: bool = False

    def record(self) -> PendingRecord:
        return PendingRecord(self.backup, self.deadline, self.persist, self.session_id)


# A revert that a change handler refused is tried again after this many seconds.
REVERT_RETRY = 5.0
# The host key a server without one given keeps in its datastore directory (mode 0600).
HOST_KEY_FILE = "ssh_host_ed25519_key"
# Worker threads per server for work that may take long (xpath filters); one per user at a time.
EXPENSIVE_WORKERS = 2


class NetconfServer:
    def __init__(self, schema: Schema, users: dict[str, User], *, host: str = "127.0.0.1", port: int | None = 0,
                 host_key: asyncssh.SSHKey | None = None, datastore_dir: pathlib.Path | str | None = None,
                 nacm: etree._Element | None = None, replay_size: int = 1000, name: str = "netconf",
                 limits: TransportLimits | None = None, sshd_socket: pathlib.Path | str | None = None):
        """`limits`: what clients are granted (connections, sessions per user, login time,
        message size, unsent output); see netconf_core.ssh.TransportLimits for the defaults.
        `sshd_socket`: also take sessions that OpenSSH's sshd hands over on this Unix socket
        (netconf_core.sshd); `port=None`: no SSH listener of our own then."""
        self.schema = schema
        self.limits = limits or TransportLimits()
        self.users = users
        self.host = host
        self.port = port
        self.name = name
        # Without a key given: the one kept beside the datastores (a restart keeps it), or a new one.
        self.host_key = host_key or (persistent_host_key(pathlib.Path(datastore_dir) / HOST_KEY_FILE) if datastore_dir
                                     else asyncssh.generate_private_key("ssh-ed25519"))
        self.datastores = Datastores(schema, datastore_dir)
        if nacm is not None and self.datastores["running"].find(f"{{{NACM}}}nacm") is None:
            seeded = self.datastores.copy("running")
            seeded.append(nacm)
            self.datastores.set("running", schema.canonical(seeded, config_only=True))
            self.datastores.set("candidate", self.datastores["running"])
        self.sessions: dict[int, Session] = {}
        self.locks: dict[str, int] = {}
        # Changes saved in the candidate by an earlier run belong to no session (0).
        self.candidate_dirty_by: int | None = 0 if self.datastores.candidate_changed() else None
        self.pending: PendingConfirm | None = None
        self._left_pending = self.datastores.load_pending()  # resumed by start(): handlers are registered then
        self.xpath_budget = filters.XPATH_BUDGET
        self._workers: ThreadPoolExecutor | None = None
        self._worker_turns: dict[str, asyncio.Lock] = {}
        self.replay = ReplayBuffer(replay_size)
        self.push = PushManager(self)  # RFC 8639/8641 subscriptions (netconf_core/push.py)
        # Set by a server whose state providers call `state_changed` whenever what they give
        # changes: on-change subscriptions to operational then look only at those moments.
        self.signals_state = False
        self._change_handlers: list[ChangeHandler] = []
        self._state_providers: list[tuple[StateProvider, frozenset[TopNode] | None, bool]] = []
        self._rpcs: dict[str, RpcHandler] = {}
        self._event_listeners: list[Callable[[Event], None]] = []
        self._commit_lock = asyncio.Lock()
        self._next_session_id = 1
        self._listener: Listener | None = None
        self.sshd_socket = sshd_socket
        self._handoff: SshdHandoff | None = None
        self._ssh_options: asyncssh.SSHServerConnectionOptions | None = None
        self._connections: set[asyncio.Task] = set()  # one per accepted TCP connection
        self._user_channels: Counter[str] = Counter()  # open netconf channels per user
        self.stats = {"in-sessions": 0, "dropped-sessions": 0, "in-bad-hellos": 0}
        # Per-session counters of the sessions that ended, so that the statistics only grow.
        self._ended_totals = {"in-rpcs": 0, "in-bad-rpcs": 0, "out-rpc-errors": 0, "out-notifications": 0}
        self.started = now()
        self.nacm_counters = NacmCounters()
        self.nacm = self._build_nacm(self.datastores["running"])
        self.access_policy: AccessPolicy = NacmAccess(lambda: self.nacm)

    # --- extension points -------------------------------------------------

    @property
    def public_host_key(self) -> str:
        """The OpenSSH public line of this server's host key: what a client pins
        (`Endpoint(..., host_key=server.public_host_key)`)."""
        return public_key_line(self.host_key)

    def on_change(self, handler: ChangeHandler) -> None:
        self._change_handlers.append(handler)

    def add_state_provider(self, provider: StateProvider, path: str | list[str] | None = None, *,
                           with_filter: bool = False) -> None:
        """`provider` serves the top-level nodes `path` names ("/module:node" or "/module:*",
        one or a list): it is called only for a <get> whose filter can select one of them
        (an xpath filter that does not start with /prefix:name can select any). Without
        `path`, it is called for every <get>. `with_filter`: it is called with the request's
        <filter> element (None for a read without one), so that it need not build, or fetch
        from elsewhere, what the filter cannot select; what it returns is filtered all the same."""
        self._state_providers.append((provider, provider_paths(self.schema, path), with_filter))

    def set_access_policy(self, policy: AccessPolicy) -> None:
        """Replace the per-session access checks (`prune`, `check_write`, `may_notify`; see
        netconf_core.extension.AccessPolicy). The NACM policy in force is `access_policy`:
        wrap it to narrow what NACM allows rather than lose it."""
        self.access_policy = policy

    def running(self) -> etree._Element:
        """The running configuration. Datastore trees are replaced whole, never changed in
        place, and may be shared: do not modify it (copy.deepcopy it to build a new one)."""
        return self.datastores["running"]

    def datastore(self, name: str) -> etree._Element:
        """The tree of datastore `name` (running, candidate or startup); do not modify it."""
        if name not in DATASTORES:
            raise ValueError(f"no datastore {name!r} (one of {', '.join(DATASTORES)})")
        return self.datastores[name]

    async def replace_running(self, tree: etree._Element) -> etree._Element:
        """Make `tree` the running configuration as a client's commit would: validated, then
        offered to every change handler (one raising RPCError refuses it and nothing changes),
        then a netconf-config-change notification (changed by the server). Returns the
        running configuration it replaced."""
        return await self.commit_running(self.schema.canonical(tree, config_only=True), None)

    def save_startup(self) -> None:
        """Startup becomes a copy of running, as <copy-config> from running to startup."""
        self.datastores.set("startup", self.datastores.copy("running"))

    def add_rpc(self, path: str, handler: RpcHandler) -> None:
        if next(self.schema.ctx.find_path(path), None) is None:
            raise ValueError(f"{path} is not an RPC or action of the loaded models")
        self._rpcs[path] = handler

    async def notify(self, content: etree._Element) -> None:
        info = self.schema.node_for(content)
        if info is None or info.keyword != "notification":
            raise ValueError(f"<{content.tag}> is not a top-level notification of the loaded models")
        event = Event(now(), info.module, info.name, content)
        self.replay.add(event)
        for session in list(self.sessions.values()):
            session.deliver(event)
        for listener in list(self._event_listeners):
            listener(event)

    def subscribe_events(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """`listener(event)` for every notification sent from now on, outside any session (the
        RESTCONF event streams); returns the function that ends it."""
        self._event_listeners.append(listener)
        return lambda: self._event_listeners.remove(listener) if listener in self._event_listeners else None

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        limits = self.limits
        self._ssh_options = await asyncssh.SSHServerConnectionOptions.construct(
            server_factory=lambda: _SSHServer(self), server_host_keys=[self.host_key],
            **{**SERVER_OPTIONS, "login_timeout": limits.login_timeout,
               "keepalive_interval": limits.keepalive_interval, "keepalive_count_max": 4})
        if self.port is not None:
            self._listener = Listener(self.host, self.port, limits, self._accepted, self.name)
            self.port = self._listener.port
        if self.sshd_socket is not None:
            self._handoff = SshdHandoff(self, self.sshd_socket)
        self._resume_pending()

    async def stop(self) -> None:
        if self.pending and self.pending.timer:
            self.pending.timer.cancel()
        for session in list(self.sessions.values()):
            session.terminate()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._handoff is not None:
            self._handoff.close()
            self._handoff = None
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    async def __aenter__(self) -> "NetconfServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _accepted(self, sock: socket.socket) -> None:
        """A TCP connection the listener admitted: SSH runs on it in a task of its own."""
        task = asyncio.get_running_loop().create_task(self._serve_connection(sock))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve_connection(self, sock: socket.socket) -> None:
        assert self._listener is not None and self._ssh_options is not None
        listener, authenticated = self._listener, False
        try:
            conn = await asyncssh.run_server(sock, options=self._ssh_options)
            authenticated = True
            listener.authenticated()
            try:
                await conn.wait_closed()
            except asyncio.CancelledError:  # stop()
                conn.abort()
                raise
        except Exception as err:  # handshake or authentication failed, or the login timeout expired
            log.debug("%s: connection ended before authentication: %r", self.name, err)
        finally:
            sock.close()  # asyncssh has closed it already, except when it failed before taking it
            listener.release(authenticated)

    def _open_session(self, transport, username: str, peer: str) -> Session:
        """A new NETCONF session on a transport whose netconf subsystem has started: an SSH
        channel of ours, or the pipes sshd handed over (netconf_core.sshd)."""
        session_id = self._next_session_id
        self._next_session_id += 1
        transport.set_write_buffer_limits(high=self.limits.output_high_water)
        session = Session(self, session_id, username, transport, peer=peer, limits=self.limits)
        self.sessions[session_id] = session
        self.stats["in-sessions"] += 1
        session.start()
        return session

    def _channel_lost(self, session: Session) -> None:
        if not session.closed:
            self.stats["dropped-sessions"] += 1
        session.connection_lost()

    def session_ended(self, session: Session) -> None:
        """Release what a closed or dropped session held (RFC 6241 sections 7.5, 8.3.5.2, 8.4.1)."""
        if self.sessions.pop(session.id, None) is not None:
            for key in self._ended_totals:
                self._ended_totals[key] += getattr(session, key.replace("-", "_"))
        for datastore, owner in list(self.locks.items()):
            if owner == session.id:
                del self.locks[datastore]
                if datastore == "candidate" and self.candidate_dirty_by is not None:
                    self.discard_changes()
        if self.pending and self.pending.persist is None and self.pending.session_id == session.id:
            self._arm(self.pending, 0, "the session that started it ended")

    def hello_message(self, session_id: int) -> bytes:
        hello = etree.Element(BASE("hello"), nsmap={None: BASE})
        caps = etree.SubElement(hello, BASE("capabilities"))
        for uri in self.capabilities():
            etree.SubElement(caps, BASE("capability")).text = uri
        etree.SubElement(hello, BASE("session-id")).text = str(session_id)
        return etree.tostring(hello)

    def capabilities(self) -> list[str]:
        caps = CAPABILITIES + [f"urn:ietf:params:netconf:capability:yang-library:1.1?revision=2019-01-04"
                               f"&content-id={self.schema.content_id}"]
        # YANG 1.0 modules are announced in the hello (RFC 7950 section 5.6.4); all modules, 1.0
        # and 1.1, are in ietf-yang-library. Older clients (yangcli) also learn 1.1 modules here,
        # except YANG-Push's YANG 1.1 modules, and those libyang implements only as leafref targets
        # of ietf-subscribed-notifications (no data of theirs is served): yuma123 cannot compile
        # the first, and the second make it see two top-level `interfaces` where a model has its
        # own. They are in ietf-yang-library, where YANG 1.1 modules belong.
        hidden = HELLO_HIDDEN_MODULES - set(self.schema.modules)
        for name, revision, ns in self.schema.module_list:
            if name not in hidden:
                caps.append(f"{ns}?module={name}" + (f"&revision={revision}" if revision else ""))
        return caps

    # --- access control ---------------------------------------------------

    def _build_nacm(self, running: etree._Element) -> Nacm:
        try:
            return Nacm(self.schema.ctx, running.find(f"{{{NACM}}}nacm"), counters=self.nacm_counters)
        except NacmConfigError as err:
            raise RPCError("invalid-value", f"the NACM rules cannot be enforced: {err}",
                           path="/ietf-netconf-acm:nacm") from None

    def check_exec(self, session: Session, module: str, name: str) -> None:
        if not self.nacm.may_exec(session.username, module, name):
            raise RPCError("access-denied", f"user '{session.username}' may not run {module}:{name}",
                           type="protocol")

    # The session's checks, by the access policy (see set_access_policy).

    def check_write(self, session: Session, before: etree._Element, after: etree._Element) -> None:
        self.access_policy.check_write(session, before, after)

    def nacm_prune(self, session: Session, tree: etree._Element) -> etree._Element:
        return self.access_policy.prune(session, tree)

    def may_notify(self, session: Session, event: Event) -> bool:
        return self.access_policy.may_notify(session, event)

    def notification_matches(self, event: Event, flt: etree._Element) -> bool:
        if flt.get("type") == "xpath":
            return _notification_selected(event, flt.get("select", ""), {k: v for k, v in flt.nsmap.items() if k})
        root = empty_tree()
        root.append(event.content)
        try:
            selected = filters.subtree(self.schema, root, list(flt))
        except RPCError as err:  # a bad or too costly filter: this subscriber misses the event, not the others
            log.info("%s: subscription filter not applied to %s: %s", self.name, event.name, err)
            return False
        finally:
            root.remove(event.content)
        return len(selected) > 0

    # --- datastores -------------------------------------------------------

    def require_datastore(self, name: str) -> None:
        if name not in DATASTORES:
            raise RPCError("invalid-value", f"no datastore '{name}'", type="protocol")

    def lock(self, session: Session, datastore: str) -> None:
        owner = self.locks.get(datastore)
        if owner is not None:
            raise RPCError("lock-denied", f"the {datastore} datastore is already locked by session {owner}",
                           type="protocol", info={"session-id": str(owner)})
        if datastore == "candidate" and self.candidate_dirty_by not in (None, session.id):
            raise RPCError("lock-denied", "the candidate has uncommitted changes of another session; "
                           "commit or discard them first", type="protocol", info={"session-id": "0"})
        self.locks[datastore] = session.id

    def unlock(self, session: Session, datastore: str) -> None:
        owner = self.locks.get(datastore)
        if owner != session.id:
            raise RPCError("operation-failed", f"the {datastore} datastore is not locked by this session",
                           type="protocol", info={"session-id": str(owner or 0)})
        del self.locks[datastore]

    def set_candidate(self, tree: etree._Element, session: Session | None) -> None:
        self.datastores.set("candidate", tree)
        self.candidate_dirty_by = session.id if session else 0

    def discard_changes(self) -> None:
        self.datastores.set("candidate", self.datastores["running"])
        self.candidate_dirty_by = None

    async def commit_running(self, tree: etree._Element, session: Session | None) -> etree._Element:
        """Make a validated tree the running configuration, after every change handler accepted
        it; returns the running configuration it replaced."""
        return await self.edit_running(lambda before: tree, session)

    async def edit_running(self, edit: Callable[[etree._Element], etree._Element], session: Session | None,
                           next_pending: Callable[[etree._Element], PendingConfirm | None] | None = None,
                           ) -> etree._Element:
        """Make `edit(running)` (a validated tree) the running configuration, after every change
        handler accepted it; returns the running configuration it replaced. The edit is made
        under the commit lock, from running as it is then: an edit that waited while another
        client's commit ran applies to that commit's result instead of undoing it. With
        `next_pending` (commit, rollback), `next_pending(running)` is the pending confirmed
        commit from then on, installed with the new running."""
        async with self._commit_lock:
            before = self.datastores["running"]
            tree = edit(before)
            nacm = self._nacm_for(tree)
            for handler in self._change_handlers:
                await handler(before, tree)
            if next_pending is None:
                self._install_running(tree, nacm)
            else:
                self._install_with_pending(tree, nacm, next_pending(before))
        await self._config_change_notification(session, before, tree)
        return before

    async def update_running(self, change: Callable[[etree._Element], etree._Element | None]) -> bool:
        """A change the server makes itself (a discovered topology, adopted device state):
        `change` gets a copy of running and returns the new tree, or None to leave it as it is.
        It runs under the commit lock, so no client commit interleaves, and the change handlers
        are not called: the new configuration describes what already is. Raises RPCError when
        the result is invalid; then nothing changes."""
        async with self._commit_lock:
            before = self.datastores["running"]
            tree = change(self.datastores.copy("running"))
            if tree is None:
                return False
            tree = self.schema.canonical(tree, config_only=True)
            if etree.tostring(tree) == etree.tostring(self.datastores["running"]):
                return False
            self._install_running(tree, self._nacm_for(tree))
        await self._config_change_notification(None, before, tree)
        return True

    def _nacm_for(self, after: etree._Element) -> Nacm:
        """The access rules of a new running configuration (rebuilt only when they changed)."""
        new = after.find(f"{{{NACM}}}nacm")
        if (etree.tostring(new) if new is not None else b"") == self.nacm.source:
            return self.nacm
        return self._build_nacm(after)

    def _install_running(self, tree: etree._Element, nacm: Nacm) -> None:
        # Datastore trees are replaced whole and never changed in place, so running and an
        # unmodified candidate can share one tree.
        self.datastores.set("running", tree)
        self.nacm = nacm
        if self.candidate_dirty_by is None:
            self.datastores.set("candidate", tree)

    def _install_with_pending(self, tree: etree._Element, nacm: Nacm, pending: PendingConfirm | None) -> None:
        """Running and the pending confirmed commit change together. On disk a new pending
        commit is written before running and an old one removed after it: a crash in between
        leaves a revert to do, never an unconfirmed configuration that nothing reverts."""
        if pending is not None:
            self.datastores.save_pending(pending.record())
        self._install_running(tree, nacm)
        if pending is None:
            self.datastores.clear_pending()
        old, self.pending = self.pending, pending
        if old is not None and old.timer is not None:
            old.timer.cancel()
        if pending is not None:
            self._arm(pending, pending.deadline - time.time(), "the confirm-timeout expired")

    async def _config_change_notification(self, session: Session | None, before: etree._Element,
                                          after: etree._Element) -> None:
        """RFC 6470 netconf-config-change, with an <edit> per changed node (what on-change
        subscriptions of running also see: they are woken here)."""
        self.push.running_changed(after)
        change = etree.Element(f"{{{NC_NOTIFICATIONS}}}netconf-config-change", nsmap={None: NC_NOTIFICATIONS})
        by = etree.SubElement(change, f"{{{NC_NOTIFICATIONS}}}changed-by")
        if session is None:
            etree.SubElement(by, f"{{{NC_NOTIFICATIONS}}}server")
        else:
            etree.SubElement(by, f"{{{NC_NOTIFICATIONS}}}username").text = session.username
            etree.SubElement(by, f"{{{NC_NOTIFICATIONS}}}session-id").text = str(session.id)
        etree.SubElement(change, f"{{{NC_NOTIFICATIONS}}}datastore").text = "running"
        change.extend(config_change_edits(self.schema, before, after))
        await self.notify(change)

    async def commit(self, session: Session, confirmed: bool, timeout: int, persist: str | None,
                     persist_id: str | None) -> None:
        """commit, with :confirmed-commit:1.1 (RFC 6241 section 8.4)."""
        pending = self.pending
        if persist_id is not None:
            if pending is None or pending.persist != persist_id:
                raise RPCError("invalid-value", f"no confirmed commit is pending with persist-id '{persist_id}'",
                               type="protocol", info={"bad-element": "persist-id"})
        elif pending is not None:
            if pending.persist is not None:
                raise RPCError("invalid-value", "a persistent confirmed commit is pending: give its persist-id",
                               type="protocol", info={"bad-element": "persist-id"})
            if pending.session_id != session.id:
                raise RPCError("in-use", f"a confirmed commit of {_owner(pending)} is pending",
                               type="protocol", info={"session-id": str(pending.session_id)})
        source = self.datastores["candidate"]
        candidate = self.schema.canonical(source, config_only=True)

        def next_pending(before: etree._Element) -> PendingConfirm | None:
            if not confirmed:
                return None
            # A confirmed commit that follows one still pending keeps the first one's backup.
            backup = self.pending.backup if self.pending else before
            return PendingConfirm(backup, time.time() + timeout, session.id, persist)
        await self.edit_running(lambda before: candidate, session, next_pending)
        if self.datastores["candidate"] is source:  # no edit of the candidate came in meanwhile
            self.discard_changes()

    async def cancel_commit(self, session: Session, persist_id: str | None) -> None:
        pending = self.pending
        if pending is None:
            raise RPCError("operation-failed", "no confirmed commit is pending", type="protocol")
        if pending.persist is not None and persist_id != pending.persist:
            raise RPCError("invalid-value", "cancel-commit needs the persist-id of the pending commit",
                           type="protocol", info={"bad-element": "persist-id"})
        if pending.persist is None and pending.session_id != session.id:
            raise RPCError("in-use", f"the pending confirmed commit belongs to {_owner(pending)}",
                           type="protocol", info={"session-id": str(pending.session_id)})
        await self._rollback("cancel-commit")

    def _resume_pending(self) -> None:
        """The confirmed commit left pending by the server's last run (RFC 6241 section 8.4.1):
        a persistent one waits again for its persist-id until its deadline, which may have
        passed already; a non-persistent one is reverted at once, its session being gone."""
        record, self._left_pending = self._left_pending, None
        if record is None:
            return
        self.pending = PendingConfirm(record.backup, record.deadline, 0, record.persist)
        if record.persist is None:
            self._arm(self.pending, 0, f"session {record.session_id}, which started it, ended with the last run")
        else:
            self._arm(self.pending, record.deadline - time.time(), "the confirm-timeout expired")

    def _arm(self, pending: PendingConfirm, delay: float, why: str) -> None:
        """Revert `pending` after `delay` seconds, unless it is confirmed or cancelled before."""
        if pending.timer is not None:
            pending.timer.cancel()
        pending.timer = asyncio.get_running_loop().call_later(
            max(delay, 0.0), lambda: asyncio.ensure_future(self._revert(pending, why)))

    async def _revert(self, pending: PendingConfirm, why: str) -> None:
        """The timer's revert. One that a change handler refused is tried again later: the
        unconfirmed configuration must not stay."""
        if self.pending is not pending:
            return
        try:
            await self._rollback(why)
        except Exception as err:  # RPCError from a handler, or a bug: the revert is still owed
            log.error("%s: cannot roll back the confirmed commit (%s), trying again in %.0f s: %s",
                      self.name, why, REVERT_RETRY, err)
            if self.pending is pending:
                self._arm(pending, REVERT_RETRY, why)

    async def _rollback(self, why: str) -> None:
        """Put the backup of the pending confirmed commit back in running, through the change
        handlers; on failure (a handler refused it) nothing changes and the commit stays pending."""
        pending = self.pending
        if pending is None or pending.reverting:
            return
        def backup(before: etree._Element) -> etree._Element:
            if self.pending is not pending:  # confirmed (or reverted) while this waited for the lock
                raise _Superseded
            return pending.backup
        log.info("%s: rolling back the confirmed commit: %s", self.name, why)
        pending.reverting = True
        try:
            await self.edit_running(backup, None, lambda before: None)
        except _Superseded:
            return
        finally:
            pending.reverting = False
        self.discard_changes()

    def state_changed(self) -> None:
        """What a state provider gives has changed: on-change subscriptions to operational
        look again now (see `signals_state`)."""
        self.push.state_changed()

    async def run_expensive(self, session: Session, work: Callable, *args):
        """`work(*args)` in a worker thread of this server, for libyang work that may take long
        (its calls release the GIL): the event loop, which carries every server of the
        process, serves the other sessions meanwhile. A few workers per server, and one turn
        at a time per user, so that one user cannot occupy them all."""
        if self._workers is None:
            self._workers = ThreadPoolExecutor(EXPENSIVE_WORKERS, thread_name_prefix=f"{self.name}-work")
        turn = self._worker_turns.setdefault(session.username, asyncio.Lock())
        async with turn:
            return await asyncio.get_running_loop().run_in_executor(self._workers, work, *args)

    # --- get --------------------------------------------------------------

    async def operational_tree(self, namespaces: set[str] | None = None, *,
                               flt: etree._Element | None = None) -> etree._Element:
        """Running plus state, not to be changed in place. With `namespaces` (those a subtree
        filter can select) or the <get>'s filter `flt`, the protocol's own state (yang-library,
        netconf-state, nacm counters) is built, and a state provider called, only when the
        filter can select what it gives."""
        selected = filter_selects(flt) if flt is not None else (
            None if namespaces is None else frozenset((ns, None) for ns in namespaces))
        protocol = selected is None or any(ns in (YANG_LIBRARY, MONITORING, NACM, NETMOD_NOTIFICATION, SUBSCRIBED_NOTIFICATIONS)
                                           for ns, _ in selected)
        providers = [(p, with_filter) for p, served, with_filter in self._state_providers
                     if may_select(selected, served)]
        if not protocol and not providers:
            return self.datastores["running"]  # nothing to merge: callers copy before changing it
        tree = self.datastores.copy("running")
        if protocol:
            merge_state(self.schema, tree, self._protocol_state())
        for provider, with_filter in providers:
            state = await (provider(flt) if with_filter else provider())
            if state is not None:
                merge_state(self.schema, tree, state)
        return tree

    def with_defaults(self, tree: etree._Element, mode: str, config_only: bool) -> etree._Element:
        if mode == "explicit":
            return tree
        dnode = self.schema.parse(tree, config_only=config_only, validate=False)
        if dnode is None:
            return tree
        node = ffi.new("struct lyd_node **", dnode.cdata)
        lib.lyd_new_implicit_all(node, self.schema.ctx.cdata, lib.LYD_IMPLICIT_NO_STATE if config_only else 0, ffi.NULL)
        dnode.cdata = node[0]
        out = self.schema.to_lxml(dnode, tree.tag, WD_FLAGS[mode])
        if mode == "report-all-tagged":
            # libyang tags with the YANG module's namespace; RFC 6243 section 6 names another.
            for element in out.iter():
                value = element.attrib.pop(f"{{{WITH_DEFAULTS}}}default", None)
                if value is not None:
                    element.set(f"{{{DEFAULT_ATTR}}}default", value)
            etree.cleanup_namespaces(out)
        return out

    def _protocol_state(self) -> etree._Element:
        """ietf-yang-library (RFC 8525), ietf-netconf-monitoring (RFC 6022), the streams of
        RFC 5277 and RFC 8639, and the subscriptions (RFC 8639, RFC 8641)."""
        root = etree.fromstring(f'<data xmlns="{BASE}">{self.schema.yang_library_xml}</data>')
        for tag in ("content-id", "module-set-id"):  # the hello's content-id (libyang leaves them empty)
            for node in root.iter(f"{{{YANG_LIBRARY}}}{tag}"):
                node.text = self.schema.content_id
        # libyang names the files it loaded (file:///...): a path of this host, which no client
        # can fetch. Both leaves are optional (RFC 8525 location, RFC 7895 schema); clients get
        # the text by get-schema (netconf-state/schemas says so: location NETCONF).
        leaks = root.xpath("//yl:location | yl:modules-state/yl:module/yl:schema"
                           " | yl:modules-state/yl:module/yl:submodule/yl:schema", namespaces={"yl": YANG_LIBRARY})
        for node in leaks:
            node.getparent().remove(node)
        root.append(self._netconf_state())
        root.extend(self.push.state())
        n = lambda tag: f"{{{NACM}}}{tag}"
        nacm = etree.SubElement(root, n("nacm"), nsmap={None: NACM})
        for tag in ("denied-operations", "denied-data-writes", "denied-notifications"):
            etree.SubElement(nacm, n(tag)).text = str(getattr(self.nacm_counters, tag.replace("-", "_")))
        return root

    def _netconf_state(self) -> etree._Element:
        m = lambda tag: f"{{{MONITORING}}}{tag}"
        state = etree.Element(m("netconf-state"), nsmap={None: MONITORING, "ncm": MONITORING})
        caps = etree.SubElement(state, m("capabilities"))
        for uri in self.capabilities():
            etree.SubElement(caps, m("capability")).text = uri
        datastores = etree.SubElement(state, m("datastores"))
        for name in DATASTORES:
            ds = etree.SubElement(datastores, m("datastore"))
            etree.SubElement(ds, m("name")).text = name
            if name in self.locks:
                lock = etree.SubElement(etree.SubElement(ds, m("locks")), m("global-lock"))
                etree.SubElement(lock, m("locked-by-session")).text = str(self.locks[name])
                etree.SubElement(lock, m("locked-time")).text = now().isoformat()
        schemas = etree.SubElement(state, m("schemas"))
        for name, revision, ns in self._schema_list():
            entry = etree.SubElement(schemas, m("schema"))
            for tag, value in (("identifier", name), ("version", revision), ("format", "ncm:yang"),
                               ("namespace", ns), ("location", "NETCONF")):
                etree.SubElement(entry, m(tag)).text = value
        sessions = etree.SubElement(state, m("sessions"))
        for s in self.sessions.values():
            entry = etree.SubElement(sessions, m("session"))
            for tag, value in (("session-id", s.id), ("transport", "ncm:netconf-ssh"), ("username", s.username),
                               ("source-host", s.peer or None), ("login-time", s.login_time.isoformat()),
                               ("in-rpcs", s.in_rpcs), ("in-bad-rpcs", s.in_bad_rpcs),
                               ("out-rpc-errors", s.out_rpc_errors), ("out-notifications", s.out_notifications)):
                if value is not None:
                    etree.SubElement(entry, m(tag)).text = str(value)
        stats = etree.SubElement(state, m("statistics"))
        etree.SubElement(stats, m("netconf-start-time")).text = self.started.isoformat()
        for tag in ("in-bad-hellos", "in-sessions", "dropped-sessions"):
            etree.SubElement(stats, m(tag)).text = str(self.stats[tag])
        totals = dict(self._ended_totals)
        for s in self.sessions.values():
            for key in totals:
                totals[key] += getattr(s, key.replace("-", "_"))
        for tag, value in totals.items():
            etree.SubElement(stats, m(tag)).text = str(value)
        return state

    def _schema_list(self) -> list[tuple[str, str, str]]:
        """Every module get-schema serves, implemented or only imported (RFC 6022 section 2.1.3)."""
        out = []
        for module in self.schema.ctx:
            revision = next(iter(module.revisions()), None)
            out.append((module.name(), revision.date() if revision else "", ffi.string(module.cdata.ns).decode()))
        return sorted(set(out))

    def get_schema(self, operation: etree._Element) -> etree._Element:
        m = lambda tag: f"{{{MONITORING}}}{tag}"
        identifier = operation.findtext(m("identifier"))
        if not identifier:
            raise RPCError("missing-element", "<get-schema> needs <identifier>", type="protocol",
                           info={"bad-element": "identifier"})
        version = (operation.findtext(m("version")) or "").strip()
        fmt = (operation.findtext(m("format")) or "yang").strip().split(":")[-1]
        if fmt not in ("yang", "yin"):
            raise RPCError("invalid-value", f"schema format '{fmt}' is not offered (yang, yin)", type="protocol",
                           info={"bad-element": "format"})
        try:
            module = self.schema.ctx.get_module(identifier.strip())
        except libyang.LibyangError:
            module = None
        revision = next(iter(module.revisions()), None) if module else None
        if module is None or (version and (revision is None or revision.date() != version)):
            raise RPCError("invalid-value", f"no schema '{identifier.strip()}'"
                           + (f" at version {version}" if version else ""), type="application",
                           info={"bad-element": "identifier"})
        path = module.filepath() if hasattr(module, "filepath") else None
        text = pathlib.Path(path).read_text() if fmt == "yang" and path else module.print_mem(fmt)
        data = etree.Element(m("data"), nsmap={None: MONITORING})
        data.text = text
        return data

    # --- RPCs and actions of the models -----------------------------------

    async def call_rpc(self, session: Session, operation: etree._Element):
        qname = etree.QName(operation)
        module = self.schema.module_of_namespace(qname.namespace or "")
        if module is None:
            raise RPCError("unknown-namespace", f"namespace '{qname.namespace}' is not supported by this server",
                           type="protocol", info={"bad-element": qname.localname, "bad-namespace": qname.namespace or ""})
        path = f"/{module}:{qname.localname}"
        info = self.schema.child(None, qname.namespace, qname.localname)
        if info is None or info.keyword != "rpc":
            raise RPCError("unknown-element", f"'{qname.localname}' is not an RPC of {module}", type="protocol",
                           info={"bad-element": qname.localname})
        self.check_exec(session, module, qname.localname)
        self._validate_operation(operation)
        handler = self._rpcs.get(path)
        if handler is None:
            raise RPCError("operation-not-supported", f"{path} is modelled but not implemented by this server",
                           type="protocol", info={"bad-element": qname.localname})
        return await handler(session, operation, None)

    async def call_action(self, session: Session, action: etree._Element):
        """An action (RFC 7950 section 7.15): the <action> element holds the data path to
        the action node; the instance it applies to must exist."""
        path_nodes = []
        node = next((c for c in action if isinstance(c.tag, str)), None)
        while node is not None:
            path_nodes.append(node)
            info = self.schema.node_for_path(path_nodes)
            if info is None:
                raise RPCError("unknown-element", f"'{etree.QName(node).localname}' is not in the schema",
                               type="protocol", info={"bad-element": etree.QName(node).localname})
            if info.keyword == "action":
                break
            node = next((c for c in node if isinstance(c.tag, str) and not _is_key(info, c)), None)
        else:
            raise RPCError("missing-element", "<action> names no action", type="protocol",
                           info={"bad-element": "action"})
        if not self.nacm.may_exec_action(session.username, path_nodes[-1]):
            raise RPCError("access-denied", f"user '{session.username}' may not run action {info.schema_path}",
                           type="protocol")
        tree = await self.operational_tree()
        context = self._find_instance(tree, path_nodes[:-1])
        if context is None:
            raise RPCError("data-missing", f"the node that action '{info.name}' applies to does not exist",
                           path=self._data_path(path_nodes[:-1]))
        self._validate_operation(action, tree)
        handler = self._rpcs.get(info.schema_path)
        if handler is None:
            raise RPCError("operation-not-supported", f"action {info.schema_path} is not implemented by this server",
                           type="protocol", info={"bad-element": info.name})
        return await handler(session, path_nodes[-1], context)

    def _validate_operation(self, operation: etree._Element, data: etree._Element | None = None) -> None:
        rpc = etree.Element(BASE("rpc"), nsmap={None: BASE})
        rpc.set("message-id", "0")
        rpc.append(copy.deepcopy(operation))
        self.schema.validate_operation(etree.tostring(rpc), data)

    def _data_path(self, path_nodes: list[etree._Element]) -> str:
        """The libyang-style path of the instance that `path_nodes` name, with its keys."""
        path = ""
        for i, node in enumerate(path_nodes):
            info = self.schema.node_for_path(path_nodes[: i + 1])
            path += f"/{info.module}:{info.name}"
            for key in info.keys:
                path += f"[{key}='{(node.findtext(f'{{{info.namespace}}}{key}') or '').strip()}']"
        return path

    def _find_instance(self, tree: etree._Element, path_nodes: list[etree._Element]) -> etree._Element | None:
        current = tree
        for edit in path_nodes:
            info = self.schema.node_for_path(path_nodes[: path_nodes.index(edit) + 1])
            keys = {k: (edit.findtext(f"{{{info.namespace}}}{k}") or "").strip() for k in info.keys}
            current = next((c for c in current.iterchildren(edit.tag)
                            if all((c.findtext(f"{{{info.namespace}}}{k}") or "").strip() == v
                                   for k, v in keys.items())), None)
            if current is None:
                return None
        return current


class _Superseded(Exception):
    """A rollback found its confirmed commit no longer pending once its turn came."""


def _notification_selected(event: Event, select: str, namespaces: dict[str, str]) -> bool:
    """An RFC 5277 xpath filter over one notification, its content element being the document
    (a non-empty result selects it). lxml evaluates it: a notification is no data tree for
    libyang, and it is small, so the xpath budget of datastore reads is not needed."""
    try:
        result = etree.XPath(select, namespaces=namespaces)(etree.ElementTree(copy.deepcopy(event.content)))
    except (etree.XPathError, TypeError) as err:
        log.info("subscription xpath filter %r not applied to %s: %s", select, event.name, err)
        return False
    return bool(result)


def _owner(pending: PendingConfirm) -> str:
    return f"session {pending.session_id}" if pending.session_id else "the server's last run"


def _is_key(info, element: etree._Element) -> bool:
    return etree.QName(element).localname in info.keys


class _NetconfChannel(NetconfSubsystemChannel):
    """One netconf subsystem channel: its bytes go to a session, and the channel's flow control
    (its write buffer's high-water mark) holds the session's requests back."""

    def __init__(self, server: NetconfServer, username: str):
        self.server = server
        self.username = username
        self.session: Session | None = None
        server._user_channels[username] += 1

    def session_started(self) -> None:
        assert self.chan is not None
        peer = self.chan.get_extra_info("peername") or ("", 0)
        self.session = self.server._open_session(self.chan, self.username, str(peer[0]))

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.session is not None:
            self.session.data_received(data)

    def eof_received(self) -> bool:
        return False  # the client is done: close the channel

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_output()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume_output()

    def connection_lost(self, exc: Exception | None) -> None:
        channels = self.server._user_channels
        channels[self.username] -= 1
        if channels[self.username] <= 0:
            del channels[self.username]
        if self.session is not None:
            self.server._channel_lost(self.session)
            self.session = None  # nothing of the session outlives its channel here


class _SSHServer(asyncssh.SSHServer):
    def __init__(self, server: NetconfServer):
        self.server = server
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def begin_auth(self, username: str) -> bool:
        user = self.server.users.get(username)
        if user is not None and user.authorized_keys and self.conn is not None:
            self.conn.set_authorized_keys(asyncssh.import_authorized_keys("\n".join(user.authorized_keys)))
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        user = self.server.users.get(username)
        return bool(user and user.password is not None
                    and hmac.compare_digest(user.password.encode(), password.encode()))

    def public_key_auth_supported(self) -> bool:
        return True

    def session_requested(self) -> _NetconfChannel:
        assert self.conn is not None
        username = self.conn.get_extra_info("username")
        limit = self.server.limits.max_sessions_per_user
        if self.server._user_channels[username] >= limit:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"user '{username}' already has {limit} NETCONF sessions on this server, its limit")
        return _NetconfChannel(self.server, username)
