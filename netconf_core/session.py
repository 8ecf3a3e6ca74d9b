"""One NETCONF session: hello, framing, and the protocol operations of RFC 6241,
RFC 5277, RFC 6022 and RFC 6243. Transport-agnostic: it is fed bytes and given a
Transport to write to, close, and hold back (flow control)."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from lxml import etree

from . import filters
from .datastore import DATASTORES, empty_tree
from .edit import apply_edit
from .errors import RPCError, RPCErrorList
from .framing import FrameReader, FramingError, encode
from .schema import qualified_path
from .ssh import TransportLimits
from .notifications import STREAM, Subscription, control_event, now, parse_time
from .ns import BASE, MONITORING, NOTIFICATION, SUBSCRIBED_NOTIFICATIONS, WITH_DEFAULTS, YANG_PUSH, YANG_XML
from .push import OPERATIONS as PUSH_OPERATIONS

if TYPE_CHECKING:
    from .server import NetconfServer

log = logging.getLogger(__name__)

BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
YANG_ACTION = YANG_XML("action")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True, huge_tree=False)


class Transport(Protocol):
    """What a session needs of its transport (an asyncssh channel has all of it)."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...  # after the buffered output is sent
    def abort(self) -> None: ...  # at once, buffered output dropped
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def get_write_buffer_size(self) -> int: ...


def _check_notification_xpath(flt: etree._Element) -> None:
    """Refuse at create-subscription an xpath filter that could never be evaluated."""
    select = flt.get("select")
    if not select:
        raise RPCError("missing-attribute", "an xpath filter needs a select attribute", type="protocol",
                       info={"bad-attribute": "select", "bad-element": "filter"})
    try:
        etree.XPath(select, namespaces={k: v for k, v in flt.nsmap.items() if k})(etree.ElementTree(etree.Element("probe")))
    except etree.XPathError as err:
        raise RPCError("invalid-value", f"filter select '{select}' is not an XPath 1.0 expression with the "
                       f"prefixes declared on it: {err}", type="protocol", info={"bad-element": "filter"}) from None


class Session:
    def __init__(self, server: "NetconfServer", session_id: int, username: str, transport: Transport,
                 peer: str = "", limits: TransportLimits = TransportLimits()):
        self.server = server
        self.id = session_id
        self.username = username
        self.peer = peer
        self.limits = limits
        self._transport = transport
        self.reader = FrameReader(limits.max_message, limits.max_chunks)
        self.hello_done = False
        self.chunked = False
        self.closed = False
        self.subscription: Subscription | None = None
        self.login_time = now()
        self.in_rpcs = 0
        self.in_bad_rpcs = 0
        self.out_rpc_errors = 0
        self.out_notifications = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._reading_paused = False
        self._output_open = asyncio.Event()  # cleared while the client does not read its replies
        self._output_open.set()
        self._stall_check: asyncio.TimerHandle | None = None
        self._worker = asyncio.get_running_loop().create_task(self._work())

    # --- transport side ---------------------------------------------------
    #
    # Flow control both ways: requests wait while the transport holds more than
    # output_high_water unsent bytes (the transport calls pause_output/resume_output), and
    # reading pauses while max_queued_requests wait, so that a client that sends and does not
    # read is held back by SSH flow control instead of growing the process. A session whose
    # unsent output passes output_hard_limit, or makes no progress for output_stall_timeout
    # while paused, is dropped.

    def start(self) -> None:
        self.send(self.server.hello_message(self.id))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.reader.feed(data)
        try:
            while (message := self.reader.next_message()) is not None:
                if not self.hello_done:
                    self._receive_hello(message)
                    if self.closed:
                        return
                else:
                    self._queue.put_nowait(message)
        except FramingError as err:
            self.in_bad_rpcs += 1
            self.drop(f"framing error: {err}")
            return
        if not self._reading_paused and self._queue.qsize() >= self.limits.max_queued_requests:
            self._reading_paused = True
            self._transport.pause_reading()

    def connection_lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.reader.clear()
            while not self._queue.empty():  # nobody is left to answer them: free them now
                self._queue.get_nowait()
            self._queue.put_nowait(None)
            self._output_open.set()
            if self._stall_check is not None:
                self._stall_check.cancel()
                self._stall_check = None
            self.server.push.session_ended(self)
            self.server.session_ended(self)

    def terminate(self) -> None:
        """Close the session from the server side (close-session, kill-session, fatal errors)."""
        self.connection_lost()
        self._transport.close()

    def drop(self, why: str) -> None:
        """End the session abnormally (broken framing, a client that does not read): one log
        line, counted in dropped-sessions, unsent output discarded."""
        if self.closed:
            return
        log.info("session %d (%s): %s; closing", self.id, self.username, why)
        self.server.stats["dropped-sessions"] += 1
        self.connection_lost()
        self._transport.abort()

    def send(self, message: bytes) -> None:
        if self.closed:
            return
        unsent = self._transport.get_write_buffer_size()
        if unsent > self.limits.output_hard_limit:
            self.drop(f"the client does not read: {unsent} bytes unsent")
            return
        try:
            self._transport.write(encode(message, self.chunked))
        except ConnectionError:  # the channel closed before its connection_lost reached the session
            log.debug("session %d: reply dropped, the channel is closed", self.id)

    def pause_output(self) -> None:
        """The transport's buffer passed its high-water mark: the client is not reading."""
        self._output_open.clear()
        if self._stall_check is None and not self.closed:
            self._schedule_stall_check(self._transport.get_write_buffer_size())

    def resume_output(self) -> None:
        self._output_open.set()
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None

    def _schedule_stall_check(self, unsent: int) -> None:
        self._stall_check = asyncio.get_running_loop().call_later(
            self.limits.output_stall_timeout, self._check_stall, unsent)

    def _check_stall(self, unsent_before: int) -> None:
        self._stall_check = None
        if self.closed or self._output_open.is_set():
            return
        unsent = self._transport.get_write_buffer_size()
        if unsent >= unsent_before:
            self.drop(f"the client read nothing for {self.limits.output_stall_timeout:.0f} s, {unsent} bytes unsent")
        else:
            self._schedule_stall_check(unsent)

    def _receive_hello(self, message: bytes) -> None:
        try:
            hello = etree.fromstring(message, _PARSER)
        except etree.XMLSyntaxError:
            hello = None
        caps = set()
        if hello is not None and hello.tag == BASE("hello") and hello.find(BASE("session-id")) is None:
            caps = {(c.text or "").strip() for c in hello.iterfind(f"{BASE('capabilities')}/{BASE('capability')}")}
        if not caps & {BASE_10, BASE_11}:
            log.info("session %d: bad or missing hello, closing", self.id)
            self.server.stats["in-bad-hellos"] += 1
            self.terminate()
            return
        self.hello_done = True
        if BASE_11 in caps:
            self.chunked = True
            self.reader.switch_to_chunked()

    async def _work(self) -> None:
        # Requests still queued when the session closes are dropped: no one is left to answer.
        while (message := await self._queue.get()) is not None and not self.closed:
            if self._reading_paused and self._queue.qsize() <= self.limits.max_queued_requests // 2:
                self._reading_paused = False
                self._transport.resume_reading()
            await self._output_open.wait()  # back-pressure: no new reply while the client lags
            if self.closed:
                return
            try:
                reply = await self._handle(message)
            except Exception as err:  # a bug must not take the process down: answer and go on
                if self.closed:  # the session ended under the handler (a server stopping)
                    log.debug("session %d: request abandoned as the session closed: %r", self.id, err)
                    return
                log.exception("session %d: internal error", self.id)
                reply = self._error_reply(None, RPCError("operation-failed", "internal server error"))
            if reply is not None:
                self.send(reply)

    # --- rpc dispatch -----------------------------------------------------

    async def _handle(self, message: bytes) -> bytes | None:
        self.in_rpcs += 1
        try:
            rpc = etree.fromstring(message, _PARSER)
        except etree.XMLSyntaxError as err:
            self.in_bad_rpcs += 1
            return self._error_reply(None, RPCError("malformed-message", f"not well-formed XML: {err}", type="rpc"))
        if rpc.tag != BASE("rpc"):
            self.in_bad_rpcs += 1
            qname = etree.QName(rpc)
            if qname.localname == "rpc":
                got = f"an <rpc> in namespace '{qname.namespace}'" if qname.namespace else "an <rpc> with no namespace"
                message = f"{got}: a NETCONF <rpc> must be in namespace {BASE} (RFC 6241 section 4.1)"
            else:
                message = f"expected <rpc> (namespace {BASE}), got <{qname.localname}>"
            return self._error_reply(None, RPCError("malformed-message", message, type="rpc"))
        if rpc.get("message-id") is None:
            self.in_bad_rpcs += 1
            return self._error_reply(rpc, RPCError("missing-attribute", "<rpc> has no message-id", type="rpc",
                                                   info={"bad-attribute": "message-id", "bad-element": "rpc"}))
        operations = [c for c in rpc if isinstance(c.tag, str)]
        if len(operations) != 1:
            self.in_bad_rpcs += 1
            return self._error_reply(rpc, RPCError("malformed-message" if not operations else "unknown-element",
                                                   "an <rpc> holds exactly one operation", type="rpc"))
        operation = operations[0]
        try:
            body = await self._dispatch(operation)
        except RPCError as err:
            self.in_bad_rpcs += 1
            return self._error_reply(rpc, err)
        except ConnectionError as err:  # a server this one relies on went away (e.g. a stack stopping)
            return self._error_reply(rpc, RPCError("operation-failed", str(err)))
        reply = self._reply(rpc)
        if body is None:
            etree.SubElement(reply, BASE("ok"))
            out = etree.tostring(reply)
        else:
            # Serialised around the body rather than moving the body into the reply.
            head = etree.tostring(reply)
            assert head.endswith(b"/>")
            if isinstance(body, bytes):
                parts = [body]
            else:
                parts = [etree.tostring(b) for b in (body if isinstance(body, list) else [body])]
            out = b"".join([head[:-2], b">", *parts, b"</rpc-reply>"])
        if operation.tag == BASE("close-session"):
            self.send(out)
            self.terminate()
            return None
        return out

    def _reply(self, rpc: etree._Element | None) -> etree._Element:
        reply = etree.Element(BASE("rpc-reply"), nsmap={None: BASE})
        if rpc is not None:
            for name, value in rpc.attrib.items():
                reply.set(name, value)
        return reply

    def _error_reply(self, rpc, err: RPCError) -> bytes:
        reply = self._reply(rpc)
        errors = err.errors if isinstance(err, RPCErrorList) else [err]
        self.out_rpc_errors += 1
        for e in errors:
            if e.path:
                e.path, e.path_nsmap = qualified_path(e.path, self.server.schema, e.path_nsmap)
            reply.append(e.to_xml())
        return etree.tostring(reply)

    async def _dispatch(self, operation: etree._Element):
        qname = etree.QName(operation)
        server = self.server
        if qname.namespace == BASE:
            handler = _BASE_OPERATIONS.get(qname.localname)
            if handler is None:
                raise RPCError("operation-not-supported", f"<{qname.localname}> is not a NETCONF operation",
                               type="protocol", info={"bad-element": qname.localname})
            server.check_exec(self, "ietf-netconf", qname.localname)
            return await handler(self, operation)
        if qname.namespace == NOTIFICATION and qname.localname == "create-subscription":
            server.check_exec(self, "notifications", "create-subscription")
            return self.create_subscription(operation)
        if qname.namespace in (SUBSCRIBED_NOTIFICATIONS, YANG_PUSH) and qname.localname in PUSH_OPERATIONS:
            module = "ietf-subscribed-notifications" if qname.namespace == SUBSCRIBED_NOTIFICATIONS else "ietf-yang-push"
            server.check_exec(self, module, qname.localname)
            return await server.push.handle(self, qname.localname, operation)
        if qname.namespace == MONITORING and qname.localname == "get-schema":
            server.check_exec(self, "ietf-netconf-monitoring", "get-schema")
            return server.get_schema(operation)
        if operation.tag == YANG_ACTION:
            return await server.call_action(self, operation)
        return await server.call_rpc(self, operation)

    # --- helpers ----------------------------------------------------------

    def _param(self, operation: etree._Element, name: str, required: bool = False) -> etree._Element | None:
        node = operation.find(BASE(name))
        if node is None and required:
            raise RPCError("missing-element", f"<{etree.QName(operation).localname}> needs <{name}>",
                           type="protocol", info={"bad-element": name})
        return node

    def _datastore(self, operation: etree._Element, param: str, allowed=DATASTORES, inline_ok=False):
        """The datastore name (or inline <config>) that the `param` element names."""
        node = self._param(operation, param, required=True)
        choices = [c for c in node if isinstance(c.tag, str)]
        if len(choices) != 1:
            raise RPCError("missing-element" if not choices else "bad-element",
                           f"<{param}> must name exactly one datastore", type="protocol", info={"bad-element": param})
        choice = choices[0]
        name = etree.QName(choice).localname
        if choice.tag == BASE("config") and inline_ok:
            return choice
        if choice.tag == BASE("url"):
            raise RPCError("operation-not-supported", "the :url capability is not supported", type="protocol",
                           info={"bad-element": "url"})
        if etree.QName(choice).namespace != BASE or name not in allowed:
            raise RPCError("invalid-value", f"<{param}> cannot be '{name}' here (allowed: {', '.join(allowed)})",
                           type="protocol", info={"bad-element": name})
        return name

    def _with_defaults(self, operation: etree._Element) -> str:
        node = operation.find(WITH_DEFAULTS("with-defaults"))
        if node is None:
            return "explicit"
        mode = (node.text or "").strip()
        if mode not in ("explicit", "report-all", "report-all-tagged", "trim"):
            raise RPCError("invalid-value", f"with-defaults '{mode}' is not a with-defaults mode", type="protocol",
                           info={"bad-element": "with-defaults"})
        return mode

    async def _filtered(self, operation: etree._Element, tree: etree._Element,
                        config_only: bool) -> etree._Element | bytes:
        """The reply's <data>: an element, or already serialised (a subtree filter's). An xpath
        filter over budget is refused; one within it is evaluated in a worker thread."""
        server = self.server
        tree = server.nacm_prune(self, tree)
        tree = server.with_defaults(tree, self._with_defaults(operation), config_only)
        flt = self._param(operation, "filter")
        if flt is None:
            return tree
        kind = flt.get("type", "subtree")
        if kind == "subtree":
            return filters.subtree_xml(server.schema, tree, list(flt))
        if kind == "xpath":
            select = flt.get("select")
            if select is None:
                raise RPCError("missing-attribute", "an xpath filter needs a select attribute", type="protocol",
                               info={"bad-attribute": "select", "bad-element": "filter"})
            expression = filters.xpath_expression(server.schema, tree, select,
                                                  {k: v for k, v in flt.nsmap.items() if k}, server.xpath_budget)
            xml = b"".join(etree.tostring(child) for child in tree)
            selected = await server.run_expensive(self, filters.xpath_select, server.schema, xml, expression, select)
            return filters.xpath_tree(tree, selected)
        raise RPCError("bad-attribute", f"filter type '{kind}' is neither subtree nor xpath", type="protocol",
                       info={"bad-attribute": "type", "bad-element": "filter"})

    def _check_not_locked(self, datastore: str) -> None:
        owner = self.server.locks.get(datastore)
        if owner is not None and owner != self.id:
            raise RPCError("in-use", f"the {datastore} datastore is locked by session {owner}",
                           type="protocol", info={"session-id": str(owner)})

    # --- notifications ----------------------------------------------------

    def create_subscription(self, operation: etree._Element) -> None:
        if self.subscription is not None:
            raise RPCError("in-use", "this session already has a subscription", type="protocol")
        stream = operation.findtext(NOTIFICATION("stream"))
        if stream is not None and stream.strip() != STREAM:
            raise RPCError("invalid-value", f"no stream '{stream.strip()}'; this server has '{STREAM}'",
                           type="protocol", info={"bad-element": "stream"})
        start_text = operation.findtext(NOTIFICATION("startTime"))
        stop_text = operation.findtext(NOTIFICATION("stopTime"))
        start = parse_time(start_text, "startTime") if start_text else None
        stop = parse_time(stop_text, "stopTime") if stop_text else None
        if stop and not start:
            raise RPCError("missing-element", "stopTime needs startTime", type="protocol",
                           info={"bad-element": "startTime"})
        if start and start > now():
            raise RPCError("bad-element", "startTime is in the future", type="protocol",
                           info={"bad-element": "startTime"})
        if start and stop and stop < start:
            raise RPCError("bad-element", "stopTime is before startTime", type="protocol",
                           info={"bad-element": "stopTime"})
        flt = operation.find(NOTIFICATION("filter"))
        if flt is None:  # ncclient writes the filter in the base namespace: take it too
            flt = operation.find(BASE("filter"))
        if flt is not None and flt.get("type") == "xpath":
            _check_notification_xpath(flt)
        self.subscription = Subscription(flt, start, stop)
        loop = asyncio.get_running_loop()
        if start is not None:
            loop.call_soon(self._replay)
        if stop is not None and stop > now():
            loop.call_later((stop - now()).total_seconds(), self._complete, self.subscription)
        return None

    def _complete(self, subscription: Subscription) -> None:
        """The subscription's stopTime has come: notificationComplete ends it (RFC 5277 section 2.1.1)."""
        if self.subscription is subscription:
            self.send(control_event("notificationComplete").to_xml())
            self.subscription = None

    def _replay(self) -> None:
        sub = self.subscription
        if sub is None:
            return
        for event in self.server.replay.between(sub.start, sub.stop):
            self.deliver(event)
        self.send(control_event("replayComplete").to_xml())
        if sub.stop is not None and sub.stop <= now():
            self._complete(sub)

    def deliver(self, event) -> None:
        if self.closed:
            return
        self.server.push.deliver_event(self, event)  # RFC 8639 subscriptions to the stream
        sub = self.subscription
        if sub is None:
            return
        if sub.stop is not None and event.time > sub.stop:
            return
        if not self.server.may_notify(self, event):
            return
        if sub.filter is not None and not self.server.notification_matches(event, sub.filter):
            return
        self.out_notifications += 1
        self.send(event.to_xml())


# --- protocol operations (RFC 6241 section 7 and 8) ----------------------------

async def op_get(s: Session, op):
    flt = s._param(op, "filter")  # state providers run only for what it can select
    return await s._filtered(op, await s.server.operational_tree(flt=flt), config_only=False)


async def op_get_config(s: Session, op):
    source = s._datastore(op, "source")
    s.server.require_datastore(source)
    return await s._filtered(op, s.server.datastores[source], config_only=True)  # NACM pruning copies it


async def op_edit_config(s: Session, op):
    server = s.server
    target = s._datastore(op, "target", allowed=("running", "candidate"))
    server.require_datastore(target)
    s._check_not_locked(target)
    default_op = (op.findtext(BASE("default-operation")) or "merge").strip()
    if default_op not in ("merge", "replace", "none"):
        raise RPCError("invalid-value", f"default-operation '{default_op}' must be merge, replace or none",
                       type="protocol", info={"bad-element": "default-operation"})
    test_option = (op.findtext(BASE("test-option")) or "test-then-set").strip()
    if test_option not in ("test-then-set", "set", "test-only"):
        raise RPCError("invalid-value", f"test-option '{test_option}' must be test-then-set, set or test-only",
                       type="protocol", info={"bad-element": "test-option"})
    error_option = (op.findtext(BASE("error-option")) or "stop-on-error").strip()
    if error_option not in ("stop-on-error", "continue-on-error", "rollback-on-error"):
        raise RPCError("invalid-value", f"error-option '{error_option}' is not an error-option",
                       type="protocol", info={"bad-element": "error-option"})
    config = s._param(op, "config")
    if config is None:
        if op.find(BASE("url")) is not None:
            raise RPCError("operation-not-supported", "the :url capability is not supported", type="protocol",
                           info={"bad-element": "url"})
        raise RPCError("missing-element", "<edit-config> needs <config>", type="protocol",
                       info={"bad-element": "config"})
    # Full validation except for `set` on the candidate, which may be built up in steps and is
    # validated at commit (RFC 6241 section 8.3); running is never left invalid.
    full = not (target == "candidate" and test_option == "set")

    def edit(before: etree._Element) -> etree._Element:
        base = empty_tree() if default_op == "replace" else before
        edited = apply_edit(server.schema, base, config, default_op if default_op != "replace" else "merge",
                            collect_all_errors=error_option == "continue-on-error")
        edited = server.schema.canonical(edited, config_only=True, validate=full)
        server.check_write(s, before, edited)
        return edited
    if test_option == "test-only":
        edit(server.datastores[target])
    elif target == "running":
        await server.edit_running(edit, s)  # from running as it is when this edit's turn comes
    else:
        server.set_candidate(edit(server.datastores[target]), s)
    return None


async def op_copy_config(s: Session, op):
    server = s.server
    target = s._datastore(op, "target")
    source = s._datastore(op, "source", inline_ok=True)
    server.require_datastore(target)
    s._check_not_locked(target)
    if isinstance(source, str):
        server.require_datastore(source)
        if source == target:
            raise RPCError("invalid-value", "source and target are the same datastore", type="protocol",
                           info={"bad-element": "target"})
        tree = server.datastores.copy(source)
    else:
        tree = empty_tree()
        tree.extend(c for c in list(source) if isinstance(c.tag, str))
    tree = server.schema.canonical(tree, config_only=True)
    server.check_write(s, server.datastores[target], tree)
    if target == "running":
        await server.commit_running(tree, s)
    elif target == "candidate":
        server.set_candidate(tree, s)
    else:
        server.datastores.set(target, tree)
    return None


async def op_delete_config(s: Session, op):
    target = s._datastore(op, "target", allowed=("startup",))
    s.server.require_datastore(target)
    s._check_not_locked(target)
    s.server.check_write(s, s.server.datastores[target], empty_tree())
    s.server.datastores.clear(target)
    return None


async def op_lock(s: Session, op):
    target = s._datastore(op, "target")
    s.server.require_datastore(target)
    s.server.lock(s, target)
    return None


async def op_unlock(s: Session, op):
    target = s._datastore(op, "target")
    s.server.require_datastore(target)
    s.server.unlock(s, target)
    return None


async def op_close_session(s: Session, op):
    return None


async def op_kill_session(s: Session, op):
    text = (s._param(op, "session-id", required=True).text or "").strip()
    if not text.isdigit():
        raise RPCError("invalid-value", f"session-id '{text}' is not a number", type="protocol",
                       info={"bad-element": "session-id"})
    victim = int(text)
    if victim == s.id:
        raise RPCError("invalid-value", "kill-session cannot end the session that sends it (use close-session)",
                       type="protocol", info={"bad-element": "session-id"})
    target = s.server.sessions.get(victim)
    if target is None:
        raise RPCError("invalid-value", f"no session {victim}", type="protocol", info={"bad-element": "session-id"})
    target.terminate()
    return None


async def op_commit(s: Session, op):
    server = s.server
    server.require_datastore("candidate")
    s._check_not_locked("running")
    confirmed = op.find(BASE("confirmed")) is not None
    timeout_text = op.findtext(BASE("confirm-timeout"))
    persist = op.findtext(BASE("persist"))
    persist_id = op.findtext(BASE("persist-id"))
    timeout = 600
    if timeout_text is not None:
        if not timeout_text.strip().isdigit() or int(timeout_text) == 0:
            raise RPCError("invalid-value", f"confirm-timeout '{timeout_text}' must be a positive number of seconds",
                           type="protocol", info={"bad-element": "confirm-timeout"})
        timeout = int(timeout_text)
    await server.commit(s, confirmed, timeout, persist.strip() if persist else None,
                        persist_id.strip() if persist_id is not None else None)
    return None


async def op_cancel_commit(s: Session, op):
    persist_id = op.findtext(BASE("persist-id"))
    await s.server.cancel_commit(s, persist_id.strip() if persist_id is not None else None)
    return None


async def op_discard_changes(s: Session, op):
    s.server.require_datastore("candidate")
    s._check_not_locked("candidate")
    s.server.discard_changes()
    return None


async def op_validate(s: Session, op):
    source = s._datastore(op, "source", inline_ok=True)
    if isinstance(source, str):
        s.server.require_datastore(source)
        tree = s.server.datastores[source]
    else:
        tree = empty_tree()
        tree.extend(c for c in list(source) if isinstance(c.tag, str))
    s.server.schema.canonical(tree, config_only=True)
    return None


_BASE_OPERATIONS = {
    "get": op_get,
    "get-config": op_get_config,
    "edit-config": op_edit_config,
    "copy-config": op_copy_config,
    "delete-config": op_delete_config,
    "lock": op_lock,
    "unlock": op_unlock,
    "close-session": op_close_session,
    "kill-session": op_kill_session,
    "commit": op_commit,
    "cancel-commit": op_cancel_commit,
    "discard-changes": op_discard_changes,
    "validate": op_validate,
}
