"""Asyncio NETCONF client over SSH (RFC 6241, RFC 6242), on asyncssh.

One `NetconfClient` is one NETCONF session. Requests may be pipelined: each `rpc()` call
gets its own message-id and waits on a future; the SSH channel's receive callback (the
reader) parses every incoming message and resolves the future whose message-id the reply
carries. Notifications (RFC 5277) are queued for `notifications()`; those of a YANG-Push
subscription (RFC 8639, RFC 8641: they carry its id) go to its `PushSubscription`.

Nothing here logs message contents: configuration may carry key material.
"""
from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Union

import asyncssh
from lxml import etree

from netconf_core import ns
from netconf_core.errors import BASE_NS, RPCError, RPCErrorList
from netconf_core.framing import FrameReader, FramingError, encode
from netconf_core.ssh import ENCRYPTION_ALGS, fingerprint

log = logging.getLogger(__name__)

NOTIFICATION_NS = ns.NOTIFICATION
WITH_DEFAULTS_NS = ns.WITH_DEFAULTS
MONITORING_NS = ns.MONITORING
SN_NS = ns.SUBSCRIBED_NOTIFICATIONS
YP_NS = ns.YANG_PUSH
DS_NS = ns.DATASTORES
# The notifications after which a subscription sends no more.
_ENDING = ("subscription-terminated", "subscription-completed")
BASE_1_0 = "urn:ietf:params:netconf:base:1.0"
BASE_1_1 = "urn:ietf:params:netconf:base:1.1"

DATASTORES = ("running", "candidate", "startup")
WITH_DEFAULTS_MODES = ("report-all", "report-all-tagged", "trim", "explicit")

Xml = Union[etree._Element, str]
# ("subtree", element or XML text) or ("xpath", expression, {prefix: namespace}).
Filter = Union[tuple[str, Xml], tuple[str, str, dict[str, str]]]

# Replies come from the server we chose to talk to, but still: no entities, no network.
# huge_tree lifts lxml's 10 MB text-node limit so that large replies parse.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


class SessionClosedError(ConnectionError):
    """The session is gone (closed, dropped, or broke the protocol); pending requests fail with it."""


class RPCTimeoutError(asyncio.TimeoutError):
    """No rpc-reply arrived in time. The session stays usable; a late reply is dropped."""


class UntrustedHostKey(ConnectionError):
    """The server offered a host key that the client does not trust (unknown, or not the one
    pinned: changed). No session was opened, nothing was authenticated. `offered` is the key
    (an asyncssh.SSHKey, None if it could not be read), `fingerprint` its SHA256 fingerprint."""

    def __init__(self, host: str, port: int, offered: asyncssh.SSHKey | None):
        self.host, self.port, self.offered = host, port, offered
        self.fingerprint = fingerprint(offered) if offered is not None else "unknown"
        self.algorithm = offered.get_algorithm() if offered is not None else "?"
        super().__init__(f"the host key of {host}:{port} is not trusted: it offered {self.algorithm} "
                         f"{self.fingerprint}")


class _HostKeyWitness(asyncssh.SSHClient):
    """Remembers the host key a server offered when it was not among the trusted ones
    (asyncssh asks `validate_host_public_key` only then), and trusts it no more for that."""

    def __init__(self) -> None:
        self.offered: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.offered = key
        return False


def _q(tag: str, ns: str = BASE_NS) -> str:
    return f"{{{ns}}}{tag}"


def _parse(xml: Xml) -> etree._Element:
    return etree.fromstring(xml.encode(), _PARSER) if isinstance(xml, str) else xml


def _sub(parent: etree._Element, tag: str, text: str | None = None, ns: str = BASE_NS) -> etree._Element:
    child = etree.SubElement(parent, _q(tag, ns))
    child.text = text
    return child


def _op(tag: str, ns: str = BASE_NS) -> etree._Element:
    return etree.Element(_q(tag, ns), nsmap={None: ns})


def _datastore(parent: etree._Element, wrapper: str, name: str) -> None:
    """<wrapper><name/></wrapper> for a datastore name."""
    if name not in DATASTORES:
        raise ValueError(f"unknown datastore {name!r}; expected one of {', '.join(DATASTORES)}")
    _sub(_sub(parent, wrapper), name)


def _datastore_or_url(parent: etree._Element, wrapper: str, where: str) -> None:
    """A datastore name, or a URL (RFC 6241 :url capability) when it contains a colon."""
    if ":" in where:
        _sub(_sub(parent, wrapper), "url", where)
    else:
        _datastore(parent, wrapper, where)


def _source(op: etree._Element, source: Xml) -> None:
    """<source> of copy-config and validate: a datastore name, a URL, or a configuration."""
    if isinstance(source, str) and not source.lstrip().startswith("<"):
        _datastore_or_url(op, "source", source)
    else:
        _sub(op, "source").append(_config_element(source))


def _config_element(config: Xml) -> etree._Element:
    """A <config> element from a <config> element, another element, or XML text holding
    one or several top-level elements."""
    if isinstance(config, str):
        # A prefixed wrapper, so that unqualified content stays unqualified.
        parsed = _parse(f'<nc:config xmlns:nc="{BASE_NS}">{config}</nc:config>')
        if len(parsed) == 1 and parsed[0].tag == _q("config"):
            return parsed[0]
        wrapper = _op("config")
        wrapper.extend(parsed)
        return wrapper
    if config.tag == _q("config"):
        return _copy(config)
    wrapper = _op("config")
    wrapper.append(_copy(config))
    return wrapper


def _copy(element: etree._Element) -> etree._Element:
    # Appending moves an lxml element out of its tree; never take the caller's element.
    return etree.fromstring(etree.tostring(element), _PARSER)


def _add_filter(op: etree._Element, filter: Filter | None, tag: str = "filter", ns: str = BASE_NS) -> None:
    if filter is None:
        return
    kind = filter[0]
    if kind == "subtree" and len(filter) == 2:
        node = _sub(op, tag, ns=ns)
        node.set("type", "subtree")
        content = filter[1]
        if isinstance(content, str):
            node.extend(_parse(f"<filter>{content}</filter>"))
        else:
            node.append(_copy(content))
    elif kind == "xpath" and len(filter) == 3:
        _, select, nsmap = filter
        if not isinstance(select, str) or not isinstance(nsmap, dict):
            raise ValueError("an xpath filter is ('xpath', expression, {prefix: namespace})")
        node = etree.SubElement(op, _q(tag, ns), nsmap={p: u for p, u in nsmap.items() if p})
        node.set("type", "xpath")
        node.set("select", select)
    else:
        raise ValueError(
            "a filter is ('subtree', element-or-xml) or ('xpath', expression, {prefix: namespace}),"
            f" not {filter!r}")


def _add_with_defaults(op: etree._Element, mode: str | None) -> None:
    if mode is None:
        return
    if mode not in WITH_DEFAULTS_MODES:
        raise ValueError(f"unknown with-defaults mode {mode!r}; expected one of {', '.join(WITH_DEFAULTS_MODES)}")
    etree.SubElement(op, _q("with-defaults", WITH_DEFAULTS_NS), nsmap={None: WITH_DEFAULTS_NS}).text = mode


def _date_time(value: datetime.datetime | str) -> str:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError("notification start/stop times must be timezone-aware")
        return value.isoformat()
    return value


def _data_or_none(reply: etree._Element) -> etree._Element | None:
    """The reply's <data> (any namespace: get-schema answers in the monitoring one), or None."""
    for child in reply:
        if isinstance(child.tag, str) and etree.QName(child).localname == "data":
            return child
    return None


class PushSubscription:
    """A YANG-Push subscription of a session: its `id`, and its notifications' contents
    (<push-update>, <push-change-update>, <subscription-terminated>, ...) as an async iterator,
    which ends when the subscription or the session ends. `next(timeout)` waits for one."""

    def __init__(self, subscription_id: int):
        self.id = subscription_id
        self.queue: asyncio.Queue[etree._Element | None] = asyncio.Queue()
        self.ended = False

    def _put(self, content: etree._Element | None) -> None:
        if self.ended:
            return
        self.queue.put_nowait(content)
        if content is None or etree.QName(content).localname in _ENDING:
            self.ended = True
            if content is not None:
                self.queue.put_nowait(None)

    async def next(self, timeout: float | None = None) -> etree._Element | None:
        """The next notification's content, or None when the subscription has ended."""
        async with asyncio.timeout(timeout):
            item = await self.queue.get()
        if item is None:
            self.queue.put_nowait(None)
        return item

    def __aiter__(self) -> "PushSubscription":
        return self

    async def __anext__(self) -> etree._Element:
        item = await self.next()
        if item is None:
            raise StopAsyncIteration
        return item


def _subscription_id(notification: etree._Element) -> int | None:
    """The subscription id a YANG-Push notification carries, None for other notifications."""
    for child in notification:
        if isinstance(child.tag, str) and etree.QName(child).namespace in (SN_NS, YP_NS):
            text = child.findtext(f"{{{etree.QName(child).namespace}}}id")
            return int(text) if text and text.strip().isdigit() else None
    return None


class _Channel(asyncssh.SSHClientSession[bytes]):
    """Feeds the bytes of the netconf subsystem to the client and tells it when the channel
    ends. After a reconnect the old channel's late callbacks are ignored (generation check)."""

    def __init__(self, client: NetconfClient, generation: int):
        self._client, self._generation = client, generation

    def _current(self) -> bool:
        return self._client._generation == self._generation

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._current():
            self._client._data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._current():
            self._client._fail(f"connection lost: {exc}" if exc else "the server closed the session")


class NetconfClient:
    """One NETCONF session over SSH. Use `await NetconfClient.connect(...)`, ideally as
    `async with await NetconfClient.connect(...) as nc:`."""

    def __init__(self, host: str, port: int, username: str, password: str | None,
                 client_keys: Sequence[str] | None, known_hosts: Any, timeout: float):
        if password is None and not client_keys:
            raise ValueError("give a password or client_keys to authenticate")
        self.host, self.port, self.username = host, port, username
        self._password, self._client_keys, self._known_hosts = password, client_keys, known_hosts
        self.timeout = timeout
        self._generation = 0
        self._reset()

    def _reset(self) -> None:
        self._generation += 1
        self.session_id: int | None = None
        self.server_capabilities: set[str] = set()
        self.base11 = False
        self._conn: asyncssh.SSHClientConnection | None = None
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._frames = FrameReader()
        self._hello_done = asyncio.Event()  # set by the server's hello, or by the session's end
        self._pending: dict[str, asyncio.Future[etree._Element]] = {}
        self._ids = itertools.count(1)
        self._notifications: asyncio.Queue[etree._Element | None] = asyncio.Queue()
        self._subscriptions: dict[int, PushSubscription] = {}
        self._early: dict[int, list[etree._Element]] = {}  # for an id whose reply is still on its way
        self._establishing = 0
        self._closed_reason: str | None = None

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered (pipelining depth)."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        """The session has ended: closed by either side, or lost."""
        return self._closed_reason is not None

    @classmethod
    async def connect(cls, host: str, port: int, username: str, password: str | None = None,
                      client_keys: Sequence[str] | None = None, known_hosts: Any = None,
                      timeout: float = 10.0) -> NetconfClient:
        """Open SSH, start the `netconf` subsystem and exchange hellos.

        `client_keys` are private key paths (or asyncssh keys); the user's ~/.ssh keys, agent and
        ssh config are never used implicitly.

        `known_hosts` is how the server's host key is checked, as asyncssh takes it: a
        known_hosts file (path), or trusted keys (`netconf_core.ssh.trusted_host_keys(line)`
        gives them for OpenSSH public lines). A key that is not trusted raises
        `UntrustedHostKey` (naming host:port and the offered key's SHA256 fingerprint) before
        anything is authenticated. `known_hosts=None` ACCEPTS ANY HOST KEY, so anyone on the
        path can pose as the server: it is for tests only. `DeviceLink`s never use it: their
        `Endpoint` must pin a key or name a known_hosts file.
        `timeout` bounds connect+hello and is the default for every request.
        """
        client = cls(host, port, username, password, client_keys, known_hosts, timeout)
        await client._open()
        return client

    async def reconnect(self) -> None:
        """Open a new session with the same parameters (after a drop or a close).
        Subscriptions and locks of the old session are not carried over."""
        self.close()
        self._reset()
        await self._open()

    async def _open(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                witness = _HostKeyWitness()
                try:
                    self._conn = await asyncssh.connect(
                        self.host, self.port, username=self.username, password=self._password,
                        client_keys=self._client_keys or None, agent_path=None, config=None,
                        known_hosts=self._known_hosts, encryption_algs=ENCRYPTION_ALGS,
                        client_factory=lambda: witness)
                except asyncssh.HostKeyNotVerifiable:
                    raise UntrustedHostKey(self.host, self.port, witness.offered) from None
                self._chan, _ = await self._conn.create_session(
                    lambda: _Channel(self, self._generation), subsystem="netconf", encoding=None)
                self._send_raw(
                    f'<hello xmlns="{BASE_NS}"><capabilities><capability>{BASE_1_0}</capability>'
                    f"<capability>{BASE_1_1}</capability></capabilities></hello>".encode())
                await self._hello_done.wait()
                if self.session_id is None:
                    raise self._closed_error()
        except BaseException:
            self.close()
            raise
        log.debug("NETCONF session %s to %s:%s (base:1.1 %s)", self.session_id, self.host, self.port, self.base11)

    # -- incoming ---------------------------------------------------------------------

    def _data_received(self, data: bytes) -> None:
        self._frames.feed(data)
        try:
            while (message := self._frames.next_message()) is not None:
                self._dispatch(etree.fromstring(message, _PARSER))
        except (FramingError, etree.XMLSyntaxError) as exc:
            self._fail(f"protocol error from server: {exc}")
            self.close()

    def _dispatch(self, msg: etree._Element) -> None:
        if self.session_id is None:
            self._take_hello(msg)
        elif msg.tag == _q("rpc-reply"):
            self._take_reply(msg)
        elif msg.tag == _q("notification", NOTIFICATION_NS):
            subscription_id = _subscription_id(msg)
            subscription = self._subscriptions.get(subscription_id) if subscription_id is not None else None
            if subscription is not None:
                subscription._put(next(c for c in msg if isinstance(c.tag, str)
                                       and etree.QName(c).namespace in (SN_NS, YP_NS)))
            elif subscription_id is not None and self._establishing:
                self._early.setdefault(subscription_id, []).append(msg)
            else:  # not one of establish_subscription's: with the other notifications
                self._notifications.put_nowait(msg)
        else:
            log.warning("ignoring unexpected message <%s> from %s:%s", msg.tag, self.host, self.port)

    def _take_hello(self, msg: etree._Element) -> None:
        if msg.tag != _q("hello"):
            raise FramingError(f"expected <hello>, got <{msg.tag}>")
        caps = {(c.text or "").strip() for c in msg.iterfind(f"{_q('capabilities')}/{_q('capability')}")}
        session_id = msg.findtext(_q("session-id"))
        if not session_id or not session_id.strip().isdigit():
            raise FramingError("server hello has no valid session-id")
        if not caps & {BASE_1_0, BASE_1_1}:
            raise FramingError("server hello announces neither base:1.0 nor base:1.1")
        self.session_id = int(session_id)
        self.server_capabilities = caps
        self.base11 = BASE_1_1 in caps
        if self.base11:
            self._frames.switch_to_chunked()
        self._hello_done.set()

    def _take_reply(self, reply: etree._Element) -> None:
        message_id = reply.get("message-id")
        if message_id is None and self._pending:
            # A server that could not parse a request answers without message-id
            # (RFC 6241 section 4.1); it answers in order, so that is the oldest request.
            message_id = next(iter(self._pending))
        future = self._pending.pop(message_id, None) if message_id is not None else None
        if future is None:
            log.debug("dropping rpc-reply with unknown message-id %r", message_id)
        elif not future.done():
            future.set_result(reply)

    def _fail(self, reason: str) -> None:
        """The session ended: fail every waiter, end the notification stream."""
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._hello_done.set()
        error = self._closed_error()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._notifications.put_nowait(None)
        for subscription in self._subscriptions.values():
            subscription._put(None)

    def _closed_error(self) -> SessionClosedError:
        return SessionClosedError(f"NETCONF session to {self.host}:{self.port}: {self._closed_reason or 'not open'}")

    # -- outgoing ---------------------------------------------------------------------

    def _send_raw(self, message: bytes) -> None:
        assert self._chan is not None
        self._chan.write(encode(message, self.base11))

    async def rpc(self, operation: Xml, timeout: float | None = None) -> etree._Element:
        """Send one operation (the element inside <rpc>, namespace-qualified) and return the
        <rpc-reply>. Raises RPCError (RPCErrorList for several) for rpc-errors of severity
        error; warnings do not raise. `timeout` defaults to the session's."""
        op = _parse(operation)
        if op.tag == _q("rpc"):
            raise ValueError("pass the operation element, not the <rpc> wrapper")
        if etree.QName(op).namespace is None:
            raise ValueError(f"operation <{op.tag}> has no namespace")
        if self._closed_reason is not None or self.session_id is None:
            raise self._closed_error()
        message_id = str(next(self._ids))
        future: asyncio.Future[etree._Element] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        wait = self.timeout if timeout is None else timeout
        try:
            self._send_raw(f'<rpc xmlns="{BASE_NS}" message-id="{message_id}">'.encode()
                           + etree.tostring(op) + b"</rpc>")
            async with asyncio.timeout(wait):  # not wait_for: on 3.11 it can swallow a cancellation
                reply = await future
        except asyncio.TimeoutError:
            raise RPCTimeoutError(
                f"no reply to <{etree.QName(op).localname}> (message-id {message_id}) from "
                f"{self.host}:{self.port} within {wait} s") from None
        finally:
            self._pending.pop(message_id, None)
        errors = [RPCError.from_xml(e) for e in reply.iterfind(_q("rpc-error"))]
        errors = [e for e in errors if e.severity != "warning"]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise RPCErrorList(errors)
        return reply

    async def _call(self, op: etree._Element, timeout: float | None = None) -> etree._Element | None:
        return _data_or_none(await self.rpc(op, timeout))

    # -- operations (RFC 6241 section 7, RFC 5277, RFC 6022) --------------------------

    async def get(self, filter: Filter | None = None, with_defaults: str | None = None) -> etree._Element | None:
        op = _op("get")
        _add_filter(op, filter)
        _add_with_defaults(op, with_defaults)
        return await self._call(op)

    async def get_config(self, source: str = "running", filter: Filter | None = None,
                         with_defaults: str | None = None) -> etree._Element | None:
        op = _op("get-config")
        _datastore(op, "source", source)
        _add_filter(op, filter)
        _add_with_defaults(op, with_defaults)
        return await self._call(op)

    async def edit_config(self, config: Xml, target: str = "running", default_operation: str | None = None,
                          test_option: str | None = None, error_option: str | None = None) -> None:
        op = _op("edit-config")
        _datastore(op, "target", target)
        for tag, value in (("default-operation", default_operation), ("test-option", test_option),
                           ("error-option", error_option)):
            if value is not None:
                _sub(op, tag, value)
        op.append(_config_element(config))
        await self._call(op)

    async def copy_config(self, source: Xml, target: str) -> None:
        """`source`: datastore name, URL, or configuration (<config> or its content)."""
        op = _op("copy-config")
        _datastore_or_url(op, "target", target)
        _source(op, source)
        await self._call(op)

    async def delete_config(self, target: str) -> None:
        op = _op("delete-config")
        _datastore_or_url(op, "target", target)
        await self._call(op)

    async def lock(self, target: str) -> None:
        op = _op("lock")
        _datastore(op, "target", target)
        await self._call(op)

    async def unlock(self, target: str) -> None:
        op = _op("unlock")
        _datastore(op, "target", target)
        await self._call(op)

    async def commit(self, confirmed: bool = False, timeout: int | None = None, persist: str | None = None,
                     persist_id: str | None = None) -> None:
        """`timeout` is the confirm-timeout in seconds (RFC 6241 section 8.4), not a wait."""
        op = _op("commit")
        if confirmed:
            _sub(op, "confirmed")
        if timeout is not None:
            _sub(op, "confirm-timeout", str(timeout))
        if persist is not None:
            _sub(op, "persist", persist)
        if persist_id is not None:
            _sub(op, "persist-id", persist_id)
        await self._call(op)

    async def cancel_commit(self, persist_id: str | None = None) -> None:
        op = _op("cancel-commit")
        if persist_id is not None:
            _sub(op, "persist-id", persist_id)
        await self._call(op)

    async def discard_changes(self) -> None:
        await self._call(_op("discard-changes"))

    async def validate(self, source: Xml = "candidate") -> None:
        """`source`: datastore name, URL, or configuration to validate."""
        op = _op("validate")
        _source(op, source)
        await self._call(op)

    async def kill_session(self, session_id: int) -> None:
        op = _op("kill-session")
        _sub(op, "session-id", str(session_id))
        await self._call(op)

    async def get_schema(self, identifier: str, version: str | None = None, format: str = "yang") -> str:
        op = _op("get-schema", MONITORING_NS)
        _sub(op, "identifier", identifier, MONITORING_NS)
        if version is not None:
            _sub(op, "version", version, MONITORING_NS)
        _sub(op, "format", format, MONITORING_NS)
        data = await self._call(op)
        if data is None:
            raise RPCError("operation-failed", message=f"get-schema of {identifier} returned no data")
        return data.text or ""

    async def create_subscription(self, stream: str | None = None, filter: Filter | None = None,
                                  start_time: datetime.datetime | str | None = None,
                                  stop_time: datetime.datetime | str | None = None) -> None:
        """RFC 5277 subscription; read what arrives with `notifications()`."""
        op = _op("create-subscription", NOTIFICATION_NS)
        if stream is not None:
            _sub(op, "stream", stream, NOTIFICATION_NS)
        _add_filter(op, filter, ns=NOTIFICATION_NS)
        if start_time is not None:
            _sub(op, "startTime", _date_time(start_time), NOTIFICATION_NS)
        if stop_time is not None:
            _sub(op, "stopTime", _date_time(stop_time), NOTIFICATION_NS)
        await self._call(op)

    async def establish_subscription(self, datastore: str | None = "running", *, stream: str | None = None,
                                     xpath: str | None = None, namespaces: dict[str, str] | None = None,
                                     subtree: Xml | None = None, period: float | None = None,
                                     anchor_time: datetime.datetime | str | None = None, on_change: bool = False,
                                     dampening: float | None = None, sync_on_start: bool | None = None,
                                     excluded_changes: Sequence[str] = (),
                                     stop_time: datetime.datetime | str | None = None) -> PushSubscription:
        """A YANG-Push subscription (RFC 8639, RFC 8641) on this session: to a `datastore`
        (running, candidate, startup, intended, operational), its selection given by `xpath`
        (prefixes in `namespaces`) or `subtree`, pushed every `period` seconds or
        `on_change` (with a `dampening` period in seconds); or to a `stream` (NETCONF), whose
        events then come through `notifications()`. Periods go on the wire in centiseconds."""
        op = _op("establish-subscription", SN_NS)
        if stream is not None:
            _sub(op, "stream", stream, SN_NS)
            if xpath is not None:
                etree.SubElement(op, _q("stream-xpath-filter", SN_NS), nsmap=namespaces or {}).text = xpath
            elif subtree is not None:
                _sub(op, "stream-subtree-filter", ns=SN_NS).extend(_parse(f"<f>{subtree}</f>") if isinstance(
                    subtree, str) else [_copy(subtree)])
        else:
            if datastore is None:
                raise ValueError("give a datastore or a stream")
            etree.SubElement(op, _q("datastore", YP_NS), nsmap={"ds": DS_NS}).text = f"ds:{datastore}"
            if xpath is not None:
                etree.SubElement(op, _q("datastore-xpath-filter", YP_NS), nsmap=namespaces or {}).text = xpath
            elif subtree is not None:
                _sub(op, "datastore-subtree-filter", ns=YP_NS).extend(_parse(f"<f>{subtree}</f>") if isinstance(
                    subtree, str) else [_copy(subtree)])
            if (period is None) == (not on_change):
                raise ValueError("a datastore subscription is periodic (period=seconds) or on_change=True")
        if stop_time is not None:
            _sub(op, "stop-time", _date_time(stop_time), SN_NS)
        if period is not None:
            periodic = _sub(op, "periodic", ns=YP_NS)
            _sub(periodic, "period", str(round(period * 100)), YP_NS)
            if anchor_time is not None:
                _sub(periodic, "anchor-time", _date_time(anchor_time), YP_NS)
        elif on_change:
            change = _sub(op, "on-change", ns=YP_NS)
            if dampening is not None:
                _sub(change, "dampening-period", str(round(dampening * 100)), YP_NS)
            if sync_on_start is not None:
                _sub(change, "sync-on-start", "true" if sync_on_start else "false", YP_NS)
            for kind in excluded_changes:
                _sub(change, "excluded-change", kind, YP_NS)
        self._establishing += 1
        try:
            reply = await self.rpc(op)
        finally:
            self._establishing -= 1
        subscription_id = int(reply.findtext(_q("id", SN_NS)) or "0")
        subscription = PushSubscription(subscription_id)
        self._subscriptions[subscription_id] = subscription
        early = self._early.pop(subscription_id, [])
        if not self._establishing:  # what is left belongs to no subscription of ours
            for msg in [m for ms in self._early.values() for m in ms]:
                self._notifications.put_nowait(msg)
            self._early.clear()
        for msg in early:
            self._dispatch(msg)
        return subscription

    async def delete_subscription(self, subscription_id: int) -> None:
        """End one of this session's subscriptions (RFC 8639 delete-subscription)."""
        op = _op("delete-subscription", SN_NS)
        _sub(op, "id", str(subscription_id), SN_NS)
        await self._call(op)
        self._end_subscription(subscription_id)

    async def resync_subscription(self, subscription_id: int) -> None:
        """Ask for a fresh push-update of an on-change subscription (RFC 8641 resync-subscription)."""
        op = _op("resync-subscription", YP_NS)
        _sub(op, "id", str(subscription_id), YP_NS)
        await self._call(op)

    async def kill_subscription(self, subscription_id: int) -> None:
        """End any session's subscription (RFC 8639 kill-subscription, for administrators)."""
        op = _op("kill-subscription", SN_NS)
        _sub(op, "id", str(subscription_id), SN_NS)
        await self._call(op)

    def _end_subscription(self, subscription_id: int) -> None:
        subscription = self._subscriptions.pop(subscription_id, None)
        if subscription is not None:
            subscription._put(None)

    async def dispatch(self, operation: Xml, timeout: float | None = None) -> etree._Element | None:
        """Any RPC or action of a model: the <rpc-reply> (which holds the output), or None for <ok/>."""
        reply = await self.rpc(operation, timeout)
        return None if reply.find(_q("ok")) is not None else reply

    async def notifications(self) -> AsyncIterator[etree._Element]:
        """Received <notification> elements, in order; ends when the session ends."""
        while True:
            item = await self._notifications.get()
            if item is None:
                self._notifications.put_nowait(None)  # later iterators end too
                return
            yield item

    # -- closing ----------------------------------------------------------------------

    async def close_session(self) -> None:
        """Polite end: <close-session/>, then the SSH connection is closed."""
        try:
            await self._call(_op("close-session"))
        finally:
            self.close()

    def close(self) -> None:
        """Abrupt end: close the SSH connection without <close-session/>."""
        self._fail("closed by the client")
        if self._conn is not None:
            self._conn.close()

    async def __aenter__(self) -> NetconfClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._closed_reason is None:
            try:
                await self.close_session()
            except (RPCError, ConnectionError, asyncio.TimeoutError):
                pass
        self.close()
        if self._conn is not None:
            await self._conn.wait_closed()
