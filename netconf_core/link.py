"""A NETCONF client link kept up with reconnect and backoff, and a multi-device transaction
(candidate, validate, confirmed commit, confirm, or roll back all).

A `DeviceLink` checks on every (re)connection that the server implements the modules its
user needs (from its ietf-yang-library), subscribes to its notifications, and calls the
user's `on_connect` (a full resync) and `on_notification` hooks. Controllers use it towards
their devices, orchestrators towards their controllers. With `watches`, a link to a server
that offers YANG-Push (ietf-yang-push) also keeps one on-change subscription per `Watch` and
hands each update to `on_update`; `pushing` says whether the server offers it (if not, poll).
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from lxml import etree

from netconf_core import ns
from netconf_core.client import NetconfClient, SessionClosedError, UntrustedHostKey
from netconf_core.errors import BASE_NS, RPCError
from netconf_core.replica import Replica
from netconf_core.schema_cache import schema_for
from netconf_core.ssh import fingerprint, trusted_host_keys

log = logging.getLogger(__name__)

YANGLIB_NS = ns.YANG_LIBRARY
BACKOFF_MIN, BACKOFF_MAX = 0.05, 5.0
OPENING_AT_ONCE = 128  # sessions one process opens at once (SSH handshake to the first subscriptions)

_opening_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _opening_gate() -> asyncio.Semaphore:
    """The bound, per event loop, on the sessions being opened. A controller of thousands of
    devices that opened every session at once would share the CPU among all the handshakes
    until each took longer than its timeout, and then retry them all: nothing would connect."""
    loop = asyncio.get_running_loop()
    gate = _opening_gates.get(loop)
    if gate is None:
        gate = _opening_gates[loop] = asyncio.Semaphore(OPENING_AT_ONCE)
    return gate


class UnpinnedEndpoint(ValueError):
    """An Endpoint that says neither which host key to trust nor where to look it up."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach a NETCONF server, and how to know it is that server.

    A way to check the server's host key is required by `DeviceLink` and `connect()`
    (`UnpinnedEndpoint` otherwise; `host_key` wins when both are given): `host_key`, the key itself as an OpenSSH public line
    ("ssh-ed25519 AAAA... [comment]"; several lines trust each of them, for a key rotation),
    which is trusted whatever name or address the server is reached by; or `known_hosts`, the
    path of an OpenSSH known_hosts file, whose entries name the host as OpenSSH does
    (`[127.0.0.1]:8830` for a port other than 22). A server offering another key is refused
    before anything is authenticated.
    """

    name: str
    host: str
    port: int
    username: str
    password: str | None = None
    client_keys: tuple[Any, ...] | None = None   # private key paths, or asyncssh keys
    host_key: str | None = None
    known_hosts: str | None = None

    def trusted(self) -> Any:
        """The `known_hosts` argument of `NetconfClient.connect` (asyncssh's) for this endpoint;
        raises `UnpinnedEndpoint` when it pins nothing."""
        if self.host_key:
            return trusted_host_keys(self.host_key)
        if self.known_hosts:
            return str(self.known_hosts)
        raise UnpinnedEndpoint(f"endpoint {self.name} ({self.host}:{self.port}) pins no host key: give it "
                               "host_key (the server's OpenSSH public key line) or known_hosts (a file)")

    async def connect(self, timeout: float = 10.0) -> NetconfClient:
        """One NETCONF session to this endpoint (host key checked), outside any DeviceLink."""
        return await NetconfClient.connect(self.host, self.port, self.username, password=self.password,
                                           client_keys=list(self.client_keys) if self.client_keys else None,
                                           known_hosts=self.trusted(), timeout=timeout)

    def refusal(self, error: UntrustedHostKey) -> str:
        """Why the server's host key was refused, in words naming this endpoint."""
        where = f"{self.name} at {self.host}:{self.port}"
        offered = f"{error.algorithm} {error.fingerprint}"
        if self.host_key:
            pinned = ", ".join(fingerprint(k) for k in trusted_host_keys(self.host_key)[0])
            return (f"host key of {where} changed: it offered {offered}, the endpoint pins {pinned}; "
                    "no session opened")
        return (f"host key of {where} is unknown or changed: it offered {offered}, which known_hosts file "
                f"{self.known_hosts} does not list for [{self.host}]:{self.port}; no session opened")


@dataclass(frozen=True)
class Watch:
    """An on-change YANG-Push subscription (RFC 8641) a DeviceLink keeps on its server: the
    nodes `xpath` selects (prefixes in `namespaces`, (prefix, namespace) pairs) of `datastore`."""

    xpath: str
    namespaces: tuple[tuple[str, str], ...]
    datastore: str = "operational"
    dampening: float | None = None  # seconds
    # Modules whose nodes the selection holds, besides the link's required modules: the link
    # keeps a copy of the selection (`DeviceLink.replica`) resolved against their schema.
    modules: tuple[str, ...] = ()


class IncompatibleDevice(Exception):
    """The device does not implement a module its user needs."""


class DeviceLink:
    def __init__(self, endpoint: Endpoint, required_modules: tuple[str, ...],
                 on_connect: Callable[["DeviceLink"], Awaitable[None]] | None = None,
                 on_notification: Callable[["DeviceLink", etree._Element], Awaitable[None]] | None = None,
                 watches: tuple[Watch, ...] = (),
                 on_update: Callable[["DeviceLink", Watch, etree._Element], Awaitable[None]] | None = None,
                 on_disconnect: Callable[["DeviceLink"], None] | None = None):
        """`on_disconnect(link)` is called when a connected link loses its session.
        `on_update(link, watch, content)` gets each <push-update> (the first, with the
        selection whole, then after each resubscription) and <push-change-update> of a watch,
        after `replica(watch)` has followed it: the watch's selection as the device has it now
        (resolved against the schema of `required_modules` and the watch's `modules`, which
        must hold what it selects; with neither, no copy is kept).
        The endpoint must pin the server's host key (`UnpinnedEndpoint` otherwise); a server
        offering another key leaves the link in status "untrusted-host-key", retrying with the
        longest back-off, its reason naming the endpoint, host:port and the offered key."""
        self._known_hosts = endpoint.trusted()
        self.endpoint = endpoint
        self.watches = watches
        self.on_update = on_update
        self._offers_push = False
        self._watch_tasks: list[asyncio.Task] = []
        self._replicas: dict[Watch, Replica | None] = {}
        self.required_modules = required_modules
        self.on_connect = on_connect
        self.on_notification = on_notification
        self.on_disconnect = on_disconnect
        self.client: NetconfClient | None = None
        self.status = "connecting"
        self.reason = ""
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def name(self) -> str:
        return self.endpoint.name

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"link {self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self._stop_watches()
        if self.client:
            self.client.close()

    def _stop_watches(self) -> None:
        for task in self._watch_tasks:
            task.cancel()
        self._watch_tasks = []

    async def session(self, timeout: float = 10.0) -> NetconfClient:
        """The live session, waiting (bounded) for a reconnection if the device is down."""
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            raise RPCError("operation-failed", f"device {self.name} is unreachable: {self.reason or self.status}") from None
        assert self.client is not None
        return self.client

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                await self._connect_once()
                backoff = BACKOFF_MIN
                await self._pump_notifications()
                self.reason = "session lost"
            except IncompatibleDevice as err:
                self.status, self.reason = "incompatible", str(err)
                log.warning("%s: %s", self.name, err)
                backoff = BACKOFF_MAX
            except UntrustedHostKey as err:
                reason = self.endpoint.refusal(err)
                if reason != self.reason or self.status != "untrusted-host-key":
                    log.error("%s", reason)
                self.status, self.reason = "untrusted-host-key", reason
                backoff = BACKOFF_MAX
            except (OSError, SessionClosedError, asyncio.TimeoutError, RPCError) as err:
                self.reason = f"{type(err).__name__}: {err}"
            except Exception as err:  # asyncssh's own errors (auth, protocol) and anything unforeseen
                self.reason = f"{type(err).__name__}: {err}"
            was_connected = self.connected.is_set()
            self.connected.clear()
            self._stop_watches()
            if self.client:
                self.client.close()
                self.client = None
            if self.status not in ("incompatible", "untrusted-host-key"):
                self.status = "disconnected"
            if was_connected and self.on_disconnect:
                self.on_disconnect(self)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connect_once(self) -> None:
        self.status = "connecting"
        async with _opening_gate():
            await self._open_session()
        self.status, self.reason = "connected", ""
        self.connected.set()
        if self.on_connect:
            await self.on_connect(self)

    async def _open_session(self) -> None:
        ep = self.endpoint
        client = await NetconfClient.connect(ep.host, ep.port, ep.username, password=ep.password,
                                             client_keys=list(ep.client_keys) if ep.client_keys else None,
                                             known_hosts=self._known_hosts)
        self.client = client
        modules = await implemented_modules(client)
        missing = set(self.required_modules) - modules
        if missing:
            raise IncompatibleDevice(f"device {self.name} does not implement {', '.join(sorted(missing))}")
        await client.create_subscription()
        self._offers_push = "ietf-yang-push" in modules
        if self._offers_push:
            for watch in self.watches:
                subscription = await client.establish_subscription(
                    watch.datastore, xpath=watch.xpath, namespaces=dict(watch.namespaces), on_change=True,
                    dampening=watch.dampening)
                self._watch_tasks.append(asyncio.get_running_loop().create_task(
                    self._pump_updates(watch, subscription), name=f"link {self.name} watch"))

    async def _pump_notifications(self) -> None:
        assert self.client is not None
        async for notification in self.client.notifications():
            if self.on_notification:
                try:
                    await self.on_notification(self, notification)
                except Exception:  # a bad event must not kill the session
                    log.exception("%s: notification handler failed", self.name)


    @property
    def pushing(self) -> bool:
        """The device offers YANG-Push and every watch's subscription is running (one the
        device ended, or that could not follow its updates, no longer is)."""
        return self._offers_push and len(self._watch_tasks) == len(self.watches) and \
            not any(task.done() for task in self._watch_tasks)

    def replica(self, watch: Watch) -> etree._Element:
        """What `watch` selects on the device, as its updates tell it (a <data> root; empty
        before the first update)."""
        replica = self._replicas.get(watch)
        return replica.root if replica is not None else etree.Element(f"{{{BASE_NS}}}data")

    async def _pump_updates(self, watch: Watch, subscription) -> None:
        modules = tuple(dict.fromkeys(self.required_modules + watch.modules))
        replica = self._replicas[watch] = Replica(schema_for(modules)) if modules else None
        async for content in subscription:  # ends with the session
            try:
                if replica is not None:
                    replica.update(content)
            except RPCError as err:  # out of step: ask for the whole selection again
                log.warning("%s: cannot follow an update of %s (%s): resynchronising", self.name, watch.xpath, err)
                if self.client is None:
                    return
                try:
                    await self.client.resync_subscription(subscription.id)
                except (RPCError, SessionClosedError) as failure:  # the watch ends: polled from now on
                    log.warning("%s: resync of %s failed (%s): polling instead", self.name, watch.xpath, failure)
                    return
                continue
            if self.on_update:
                try:
                    await self.on_update(self, watch, content)
                except Exception:  # a bad update must not end the watch
                    log.exception("%s: update handler failed", self.name)


async def implemented_modules(client: NetconfClient) -> set[str]:
    data = await client.get(filter=("subtree", f'<yang-library xmlns="{YANGLIB_NS}"><module-set><module>'
                                               f"<name/></module></module-set></yang-library>"))
    if data is None:
        return set()
    return {(n.text or "").strip() for n in data.iter(f"{{{YANGLIB_NS}}}name")
            if n.getparent().tag == f"{{{YANGLIB_NS}}}module"}


class TransactionError(Exception):
    """One device refused its part; every device was rolled back."""

    def __init__(self, device: str, error: Exception):
        super().__init__(f"device {device} refused the change: {error}")
        self.device = device
        self.error = error

    def as_rpc_error(self) -> RPCError:
        inner = self.error
        message = f"device {self.device} refused the change: " + (
            inner.message if isinstance(inner, RPCError) else str(inner))
        return RPCError("operation-failed", message, info={"bad-element": self.device})


async def transaction(edits: dict[DeviceLink, etree._Element], confirm_timeout: int = 30) -> None:
    """Apply one <config> per device as one change: all devices take it, or none keeps it.

    1. lock and edit each candidate, then validate it;
    2. confirmed commit on each (a device rolls itself back if this controller vanishes);
    3. confirm each. A failure before the confirmations discards or cancels everywhere; a
       failure of a confirmation (the device rolled itself back) puts the configuration each
       other device had before back in place.
    """
    if not edits:
        return
    sessions = {link: await link.session() for link in edits}
    locked: list[DeviceLink] = []
    committed: list[DeviceLink] = []
    confirmed: list[DeviceLink] = []
    previous: dict[DeviceLink, etree._Element] = {}
    try:
        await _each(sessions, lambda link, nc: nc.lock("candidate"), locked)
        await _each(sessions, lambda link, nc: _edit_and_validate(nc, edits[link]))
        await _each(sessions, lambda link, nc: _keep(previous, link, nc.get_config("running")))
        await _each(sessions, lambda link, nc: nc.commit(confirmed=True, timeout=confirm_timeout), committed)
        await _each(sessions, lambda link, nc: nc.commit(), confirmed)
    except TransactionError:
        pending = [link for link in committed if link not in confirmed]
        await asyncio.gather(*(sessions[link].cancel_commit() for link in pending), return_exceptions=True)
        await asyncio.gather(*(sessions[link].copy_config(previous[link], "running") for link in confirmed),
                             return_exceptions=True)
        await asyncio.gather(*(sessions[link].discard_changes() for link in locked), return_exceptions=True)
        raise
    finally:
        # Every session, not only those whose lock was answered: a lock whose reply timed out
        # may still have been granted, and would then deny every later transaction on that
        # session. Unlocking a lock held by another session is refused and changes nothing.
        await asyncio.gather(*(nc.unlock("candidate") for nc in sessions.values()), return_exceptions=True)


async def _keep(previous: dict[DeviceLink, etree._Element], link: DeviceLink, reply) -> None:
    data = await reply
    config = etree.Element(f"{{{BASE_NS}}}config", nsmap={None: BASE_NS})
    config.extend(list(data) if data is not None else [])
    previous[link] = config


async def _edit_and_validate(nc: NetconfClient, config: etree._Element) -> None:
    await nc.edit_config(config, target="candidate")
    await nc.validate("candidate")


async def _each(sessions: dict[DeviceLink, NetconfClient], step, done: list[DeviceLink] | None = None) -> None:
    """Run `step` on every device concurrently; remember who succeeded; raise the first refusal."""
    links = list(sessions)
    results = await asyncio.gather(*(step(link, sessions[link]) for link in links), return_exceptions=True)
    failure = None
    for link, result in zip(links, results):
        if isinstance(result, BaseException):
            failure = failure or TransactionError(link.name, result)
        elif done is not None:
            done.append(link)
    if failure:
        raise failure

