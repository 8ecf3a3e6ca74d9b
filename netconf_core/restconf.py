"""RESTCONF (RFC 8040, with RFC 8527 datastores and RFC 8072 YANG Patch) on a NetconfServer:
the same datastores, validation, change handlers, NACM and users as its NETCONF sessions.

    server = NetconfServer(schema, users, nacm=standard_nacm(["admin"], ["monitor"]))
    restconf = RestconfServer(server, "127.0.0.1", 8080)            # plain HTTP: loopback only
    restconf = RestconfServer(server, "0.0.0.0", 443, ssl_context=context)   # HTTPS
    await server.start(); await restconf.start()

Resources (root {+restconf} = /restconf, announced by /.well-known/host-meta):

- `{+restconf}/data[/path]`: the unified datastore. GET reads running plus state (`content`
  config, nonconfig or all), writes go to running. Data resources are addressed as RFC 8040
  section 3.5.3 has it: module-qualified names, `list=key1,key2`, percent-encoded values.
- `{+restconf}/ds/ietf-datastores:{running,candidate,startup,operational,intended}[/path]`
  (RFC 8527): running and candidate are writable; operational, startup and intended
  (= running here) are read-only. `{+restconf}/operations/ietf-netconf:commit` and
  `:discard-changes` commit or discard the candidate.
- `{+restconf}/operations[/module:rpc]`: the models' RPCs (POST invokes; input
  {"module:input": ...}, output {"module:output": ...}); a POST to an action's data path
  invokes the action.
- `{+restconf}/yang-library-version`; `ietf-restconf-monitoring:restconf-state` (in /data, and
  over NETCONF): capabilities and the NETCONF stream, served as Server-Sent Events at
  `{+restconf}/streams/NETCONF/{json,xml}` (`start-time`/`stop-time` replay, `filter` XPath).

Methods: GET and HEAD (query parameters depth, fields, content, with-defaults), POST (creates
one child: 201 with Location; 409 resource-denied when it exists; `insert`/`point` in
ordered-by-user lists), PUT (creates 201 or replaces 204), PATCH (plain merge 204; the target
must exist; or a YANG Patch, application/yang-patch+json or +xml, applied as one transaction
and answered with yang-patch-status), DELETE (204; 404 when missing), OPTIONS (Allow,
Accept-Patch). Every write goes through the engine's commit path: edit, libyang validation of
the whole datastore, NACM, change handlers; an invalid edit changes nothing. A datastore a
NETCONF session has locked refuses writes (409 in-use). ETag and Last-Modified are the
configuration datastore's (RFC 8040 section 3.4.1: the same for every resource in it);
If-Match / If-Unmodified-Since that fail answer 412, If-None-Match / If-Modified-Since 304.

Encodings: application/yang-data+json (RFC 7951) and application/yang-data+xml, both through
libyang (netconf_core.restconf_codec); other Content-Types are 415, an Accept naming none of
them 406. Errors are ietf-restconf:errors with the status of RFC 8040 section 7's error-tag
table (STATUS_OF_TAG), the engine's error-tags unchanged: so a must, unique or max-elements
violation is 500 operation-failed (with its error-app-tag), a leafref without target or a
missing mandatory node 409 data-missing, a value of the wrong type 400 invalid-value. A missing
resource is 404 invalid-value (a non-presence container that holds nothing is there, empty),
a method the resource lacks 405 operation-not-supported, a failed precondition 412
operation-failed.

Users authenticate with HTTP Basic against the server's users and passwords (401 without or
with wrong credentials); NACM applies per user as on NETCONF (403 access-denied). RESTCONF
has no sessions: the engine sees each request as a session of that user with session-id 0
(the config-change notification's session-id-or-zero). Plain HTTP is refused on a
non-loopback address unless `insecure_http=True`. No client can exhaust the server
(`limits=HttpLimits(...)`): connections, requests in progress, body and header sizes, idle
keep-alive and TLS handshake times, and event streams per user are capped.

`lenient=True` accepts what clients of ETSI GS QKD 015 nodes (TeraFlowSDN's QKD driver) send
where it departs from RFC 8040 and RFC 7951, and nothing that would weaken validation (the
data is typed and validated as any other):

- Content-Type and Accept `application/json` (and `application/xml`) stand for the
  yang-data media types;
- a trailing '/' on a resource path (`.../qkd_node/qkd_links/`) is ignored;
- a body's top-level member names may lack their module prefix (`{"qkd_links": ...}`): a bare
  name is taken in the module of the resource's parent, or at the top of a datastore in the
  only module with a top-level node of that name (ambiguous names stay refused);
- a member whose value is null (`"virt_prev_hop": null` for a first hop) is taken as absent:
  RFC 7951 has null only inside an empty type's [null];
- a POST body may name the target resource itself rather than the child to create
  (`POST .../qkd_links` with `{"qkd_links": {"qkd_link": [...]}}`, where RFC 8040 has
  `{"etsi-qkd-sdn-node:qkd_link": [...]}`): the target's children in it are created, each
  refused (409) if it exists, all or none;
- a reply to a request that did not ask for application/yang-data+json (Accept absent,
  `*/*` or application/json) names its top-level member without the module prefix
  (`{"qkd_interfaces": {...}}`), as those clients read it. Values keep RFC 7951's form:
  identityrefs of another module are prefixed (`etsi-qkd-node-types:PHYS`), numbers are JSON
  numbers; a client asking for application/yang-data+json gets RFC 7951 throughout.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import datetime as dt
import email.utils
import hashlib
import hmac
import ipaddress
import json
import logging
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import libyang
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from lxml import etree

from . import ns
from .datastore import empty_tree
from .edit import INSERT_ATTR, KEY_ATTR, OPERATION_ATTR, VALUE_ATTR, apply_edit
from .errors import BASE_NS, RPCError, RPCErrorList
from .notifications import STREAM, Event, now, parse_time
from .restconf_codec import (JSON, RESTCONF_NS, XML, Body, bare_top_member, canonical_steps, cut, edit_segments,
                             encode_json, encode_notification, encode_xml, error_body, find, json_members,
                             limit_depth, malformed, matches, nonconfig, operation_input, operation_output,
                             parse_body, parse_patch, patch_status, path_config, qualify_members, select_fields,
                             text_value, xml_root)
from .restconf_path import Step, bad_path, data_path, parse_fields, resolve, uri_path
from .ssh import RateLimitedLog

if TYPE_CHECKING:
    from .server import NetconfServer

log = logging.getLogger(__name__)

ROOT = "/restconf"
YANG_DATA_JSON = "application/yang-data+json"
YANG_DATA_XML = "application/yang-data+xml"
YANG_PATCH_JSON = "application/yang-patch+json"
YANG_PATCH_XML = "application/yang-patch+xml"
MEDIA = {JSON: YANG_DATA_JSON, XML: YANG_DATA_XML}
YANG_LIBRARY_VERSION = "2019-01-04"
MONITORING_NS = ns.RESTCONF_MONITORING
MONITORING_MODULE = "ietf-restconf-monitoring"
MAX_BODY = 16 * 1024 * 1024  # as a NETCONF message (TransportLimits.max_message)
RETRY_AFTER_S = "1"  # what a client over a server-wide limit is told to wait
STREAM_BACKLOG = 1000  # events a stream's client may lag behind before its stream is ended
CAPABILITIES = (
    "urn:ietf:params:restconf:capability:defaults:1.0?basic-mode=explicit",
    "urn:ietf:params:restconf:capability:depth:1.0",
    "urn:ietf:params:restconf:capability:fields:1.0",
    "urn:ietf:params:restconf:capability:filter:1.0",
    "urn:ietf:params:restconf:capability:replay:1.0",
    "urn:ietf:params:restconf:capability:with-defaults:1.0",
    "urn:ietf:params:restconf:capability:yang-patch:1.0",
)
DATASTORES = {"running": "running", "candidate": "candidate", "startup": "startup",
              "intended": "running", "operational": "operational"}
WRITABLE = ("running", "candidate")
# RFC 8040 section 7: the status of each error-tag (the first where the RFC gives several;
# the others come with the cases that name them: 404, 405, 406, 412, 413, 415).
STATUS_OF_TAG = {
    "in-use": 409, "invalid-value": 400, "too-big": 413, "missing-attribute": 400, "bad-attribute": 400,
    "unknown-attribute": 400, "bad-element": 400, "unknown-element": 400, "unknown-namespace": 400,
    "access-denied": 403, "lock-denied": 409, "resource-denied": 409, "rollback-failed": 500,
    "data-exists": 409, "data-missing": 409, "operation-not-supported": 501, "operation-failed": 500,
    "partial-operation": 500, "malformed-message": 400,
}
_READ_PARAMS = ("content", "depth", "fields", "with-defaults")
_STREAM_PARAMS = ("filter", "start-time", "stop-time")
_WD_MODES = ("explicit", "report-all", "report-all-tagged", "trim")


class HttpError(Exception):
    """A request that fails with `status` and these rpc-errors (the error-tag does not always
    decide the status: 404, 405, 406, 412, 415)."""

    def __init__(self, status: int, tag: str, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.errors = [RPCError(tag, message, type="protocol")]
        self.headers = headers or {}


class RestconfSession:
    """What the engine asks of the session behind a request (username, peer, id) for one
    RESTCONF request. RESTCONF has no sessions: the id is 0."""

    id = 0
    closed = False

    def __init__(self, username: str, peer: str):
        self.username = username
        self.peer = peer

    def terminate(self) -> None:
        """Nothing to end: the request ends with its reply."""


@dataclass(frozen=True)
class HttpLimits:
    """What one RESTCONF server grants its HTTP clients: the HTTP side of the SSH transport's
    netconf_core.ssh.TransportLimits. Over a server-wide limit a client gets 503 with
    Retry-After (the server is busy, not the request wrong); over its own, 409 resource-denied
    (RFC 8040 section 7), a body too large 413 too-big, a header too large 431 (RFC 6585);
    each as ietf-restconf:errors, and the others are served meanwhile."""

    max_connections: int = 256  # TCP connections at once; one more is answered 503 and closed
    max_requests: int = 64  # requests being handled at once (event streams aside): 503
    max_body: int = MAX_BODY  # bytes of a request body: 413
    max_header_line: int = 8190  # bytes of the request line or of one header: 431
    max_headers: int = 128  # header fields of a request: 431
    keepalive_timeout: float = 15.0  # seconds an idle keep-alive connection stays open
    handshake_timeout: float = 10.0  # seconds to finish a TLS handshake
    max_streams_per_user: int = 8  # event streams (SSE) one user holds open at once: 409
    stream_heartbeat: float = 15.0  # seconds between SSE comments on a quiet stream: a client gone is seen


@dataclass
class _Entity:
    """A configuration datastore's entity tag and last change, for one tree of it."""

    tree: etree._Element
    etag: str
    modified: dt.datetime


@dataclass
class _Request:
    http: web.Request
    session: RestconfSession
    fmt: str  # the reply's encoding
    bare: bool  # lenient reply: top-level member without its module prefix


class _EditFailed(Exception):
    """One edit of a YANG Patch failed: its id and errors."""

    def __init__(self, edit_id: str, err: RPCError):
        super().__init__(edit_id)
        self.edit_id = edit_id
        self.err = err


class RestconfServer:
    """RESTCONF on `netconf` (a NetconfServer), at http(s)://host:port/restconf."""

    def __init__(self, netconf: NetconfServer, host: str = "127.0.0.1", port: int = 0, *,
                 ssl_context: ssl.SSLContext | None = None, insecure_http: bool = False, lenient: bool = False,
                 limits: HttpLimits = HttpLimits()):
        if ssl_context is None and not insecure_http and not _is_loopback(host):
            raise ValueError(f"plain HTTP on {host}, which is not a loopback address: give an ssl_context "
                             "(HTTPS), or insecure_http=True")
        self.netconf = netconf
        self.schema = netconf.schema
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.lenient = lenient
        self.limits = limits
        self._in_flight = 0  # requests being handled, event streams aside
        self._user_streams: dict[str, int] = {}
        self._listener: asyncio.AbstractServer | None = None
        self._overload_log = RateLimitedLog()
        self._entities: dict[str, _Entity] = {}
        self._np: dict[str, bool] = {}
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Queue] = set()
        self._serving = False
        self.app = web.Application(client_max_size=limits.max_body)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        if self.schema.namespace_of_module(MONITORING_MODULE) is not None:
            netconf.add_state_provider(self._restconf_state, path=f"/{MONITORING_MODULE}:restconf-state")
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._listener = await asyncio.get_running_loop().create_server(
            self._accept, self.host, self.port, ssl=self.ssl_context,
            ssl_handshake_timeout=self.limits.handshake_timeout if self.ssl_context else None)
        self.port = self._listener.sockets[0].getsockname()[1]
        self._serving = True
        self._unsubscribe = self.netconf.subscribe_events(self._event)

    async def stop(self) -> None:
        self._serving = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for queue in list(self._streams):
            queue.put_nowait(None)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RestconfServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # --- connections and limits -------------------------------------------------------------------

    def _accept(self) -> asyncio.Protocol:
        """A protocol for a new connection: aiohttp's, with the limits and RESTCONF errors, or
        over max_connections one that answers 503 and closes."""
        server = self._runner.server
        if len(server.connections) >= self.limits.max_connections:
            self._overload_log.warning("%s: RESTCONF connection refused: %d open, the limit", self.netconf.name,
                                       self.limits.max_connections)
            return _Refusal(self._overload_reply(f"{self.limits.max_connections} connections are open, this "
                                                 "server's limit"))
        return _Handler(self, server, loop=asyncio.get_running_loop(), access_log=None,
                        keepalive_timeout=self.limits.keepalive_timeout, max_line_size=self.limits.max_header_line,
                        max_field_size=self.limits.max_header_line, max_headers=self.limits.max_headers)

    def _overload_reply(self, message: str) -> bytes:
        body = error_body(self.schema, [RPCError("resource-denied", f"{message}; try again later",
                                                 type="transport")], JSON)
        return (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {YANG_DATA_JSON}\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n"
                ).encode() + body

    # --- the request ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.rel_url.raw_path.startswith(f"{ROOT}/streams/"):
            return await self._handle_one(request)  # streams have their own, per-user limit
        if self._in_flight >= self.limits.max_requests:
            self._overload_log.warning("%s: RESTCONF request refused: %d in progress, the limit", self.netconf.name,
                                       self.limits.max_requests)
            fmt = XML if YANG_DATA_XML in request.headers.get("Accept", "") else JSON
            return self._error_response(request, 503, [RPCError(
                "resource-denied", f"{self.limits.max_requests} requests are in progress, this server's limit; try "
                "again later", type="transport")], fmt, {"Retry-After": RETRY_AFTER_S})
        self._in_flight += 1
        try:
            return await self._handle_one(request)
        finally:
            self._in_flight -= 1

    async def _handle_one(self, request: web.Request) -> web.StreamResponse:
        fmt, bare = JSON, False
        try:
            raw = request.rel_url.raw_path
            if raw == "/.well-known/host-meta":
                return self._host_meta(request)
            if raw != ROOT and not raw.startswith(ROOT + "/"):
                raise HttpError(404, "invalid-value", f"no resource {request.rel_url.path} (the RESTCONF root is {ROOT})")
            session = RestconfSession(self._authenticate(request), request.remote or "")
            fmt, bare = self._reply_format(request)
            response = await self._route(_Request(request, session, fmt, bare), raw[len(ROOT):])
        except _NotModified as err:
            return web.Response(status=304, headers=self._entity_headers(err.entity))
        except HttpError as err:
            return self._error_response(request, err.status, err.errors, fmt, err.headers)
        except RPCError as err:
            errors = err.errors if isinstance(err, RPCErrorList) else [err]
            return self._error_response(request, STATUS_OF_TAG.get(err.tag, 500), errors, fmt)
        except web.HTTPRequestEntityTooLarge as err:
            return self._error_response(request, 413, [RPCError("too-big", str(err), type="transport")], fmt)
        except ConnectionError as err:  # a server this one relies on went away
            return self._error_response(request, 500, [RPCError("operation-failed", str(err))], fmt)
        except Exception:
            log.exception("%s: RESTCONF %s %s failed", self.netconf.name, request.method, request.rel_url)
            return self._error_response(request, 500, [RPCError("operation-failed", "internal server error")], fmt)
        return response

    def _authenticate(self, request: web.Request) -> str:
        challenge = {"WWW-Authenticate": 'Basic realm="restconf", charset="UTF-8"'}
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            raise HttpError(401, "access-denied", "authentication required (HTTP Basic)", headers=challenge)
        try:
            name, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, sep, password = "", "", ""
        user = self.netconf.users.get(name) if sep else None
        if user is None or user.password is None or not hmac.compare_digest(user.password.encode(), password.encode()):
            raise HttpError(401, "access-denied", "wrong user name or password", headers=challenge)
        return name

    async def _route(self, req: _Request, rest: str) -> web.StreamResponse:
        method = req.http.method
        if rest in ("", "/"):
            self._allow(method, ("GET", "HEAD", "OPTIONS"))
            self._no_params(req)
            return self._options(("GET", "HEAD", "OPTIONS")) if method == "OPTIONS" else self._root(req)
        segments = rest.split("/")[1:]
        if self.lenient and len(segments) > 1 and segments[-1] == "":
            segments.pop()
        if "" in segments:
            raise bad_path("an empty path step names no resource (a '//' or a trailing '/')")
        head = segments[0]
        if head == "data":
            return await self._datastore(req, "unified", segments[1:])
        if head == "ds" and len(segments) > 1:
            name = segments[1].partition(":")
            if name[0] != "ietf-datastores" or name[2] not in DATASTORES:
                raise HttpError(404, "invalid-value", f"no datastore '{segments[1]}' (ietf-datastores:"
                                + ", ietf-datastores:".join(DATASTORES) + ")")
            return await self._datastore(req, name[2], segments[2:])
        if head == "operations":
            return await self._operations(req, segments[1:])
        if head == "yang-library-version" and len(segments) == 1:
            self._allow(method, ("GET", "HEAD", "OPTIONS"))
            self._no_params(req)
            if method == "OPTIONS":
                return self._options(("GET", "HEAD", "OPTIONS"))
            if req.fmt == JSON:
                return self._reply(req, json.dumps({"ietf-restconf:yang-library-version": YANG_LIBRARY_VERSION}).encode())
            element = etree.Element(f"{{{RESTCONF_NS}}}yang-library-version", nsmap={None: RESTCONF_NS})
            element.text = YANG_LIBRARY_VERSION
            return self._reply(req, etree.tostring(element))
        if head == "streams" and len(segments) == 3 and segments[1] == STREAM and segments[2] in (JSON, XML):
            self._allow(method, ("GET", "OPTIONS"))
            return self._options(("GET", "OPTIONS")) if method == "OPTIONS" else await self._stream(req, segments[2])
        raise HttpError(404, "invalid-value", f"no resource {ROOT}{rest}")

    # --- datastores and data resources -----------------------------------------------------------

    async def _datastore(self, req: _Request, datastore: str, segments: list[str]) -> web.StreamResponse:
        method = req.http.method
        writable = datastore == "unified" or datastore in WRITABLE and DATASTORES[datastore] == datastore
        allowed = ("GET", "HEAD", "OPTIONS") + (("POST", "PUT", "PATCH") + (("DELETE",) if segments else ())
                                                if writable else ())
        self._allow(method, allowed)
        steps = canonical_steps(self.schema, resolve(self.schema, segments, allow_action=True))
        if steps and steps[-1].info.keyword == "action":
            self._allow(method, ("POST", "OPTIONS"))
            if method == "OPTIONS":
                return self._options(("POST", "OPTIONS"))
            return await self._invoke(req, steps, None)
        if method == "OPTIONS":
            return self._options(allowed, patch="PATCH" in allowed)
        if method in ("GET", "HEAD"):
            return await self._read(req, datastore, steps)
        return await self._write(req, "running" if datastore == "unified" else datastore, steps)

    async def _read(self, req: _Request, datastore: str, steps: tuple[Step, ...]) -> web.Response:
        params = self._params(req, _READ_PARAMS, _STREAM_PARAMS)
        content = params.get("content", "all")
        if content not in ("config", "nonconfig", "all"):
            raise bad_path(f"content '{content}' is not config, nonconfig or all")
        mode = params.get("with-defaults", "explicit")
        if mode not in _WD_MODES:
            raise bad_path(f"with-defaults '{mode}' is not one of {', '.join(_WD_MODES)}")
        depth = _depth(params.get("depth", "unbounded"))
        target = steps[-1].info if steps else None
        selection = parse_fields(self.schema, params["fields"], target) if "fields" in params else None
        config_ds = "running" if datastore in ("unified", "operational", "intended") else datastore
        entity = self._entity(config_ds)
        self._check_read_conditions(req.http, entity)
        server = self.netconf
        state = datastore in ("unified", "operational") and content != "config"
        if state:
            namespaces = {steps[0].info.namespace} if steps else None
            tree = await server.operational_tree(namespaces)
        else:
            tree = server.datastores[config_ds]
        if steps:
            tree = self._cut(tree, steps)
            if tree is None:
                raise HttpError(404, "invalid-value", f"{uri_path(steps)} does not exist")
        if state and content == "nonconfig":
            tree = nonconfig(self.schema, tree)
            if steps and find(self.schema, tree, steps) is None:
                raise HttpError(404, "invalid-value", f"{uri_path(steps)} holds no state data")
        pruned = server.nacm_prune(req.session, tree)
        if steps and find(self.schema, pruned, steps) is None:
            raise HttpError(403, "access-denied", f"user '{req.session.username}' may not read {uri_path(steps)}")
        config_only = not state
        tagged = mode == "report-all-tagged"
        pruned = server.with_defaults(pruned, mode, config_only)
        if (selection is not None or depth is not None) and not steps and pruned is server.datastores[config_ds]:
            pruned = copy.deepcopy(pruned)
        node = find(self.schema, pruned, steps) if steps else None
        if steps and node is None:  # trim took the target itself (a leaf at its default)
            raise HttpError(404, "invalid-value", f"{uri_path(steps)} has its default value (with-defaults trim)")
        if selection is not None:
            select_fields(self.schema, node if steps else pruned, target, selection)
        if depth is not None:
            for element in [node] if steps else [c for c in pruned if isinstance(c.tag, str)]:
                limit_depth(self.schema, element, target if steps else self._top_info(element), depth)
        if req.fmt == JSON:
            body = encode_json(self.schema, pruned, steps, config_only=config_only, tagged=tagged)
            if req.bare and steps:
                body = bare_top_member(body)
        else:
            body = encode_xml(pruned, node)
        return self._reply(req, body, entity=entity)

    def _np_container(self, info) -> bool:
        """Whether a schema node is a non-presence container."""
        known = self._np.get(info.schema_path)
        if known is None:
            snode = next(self.schema.ctx.find_path(info.schema_path), None) if info.keyword == "container" else None
            known = self._np[info.schema_path] = isinstance(snode, libyang.SContainer) and snode.presence() is None
        return known

    def _present_from(self, tree: etree._Element, steps: tuple[Step, ...]) -> int | None:
        """How many steps lead to an element of `tree`, when the others are non-presence
        containers (which exist, empty, wherever their parent does: RFC 7950 section 7.5.1);
        None when the resource does not exist."""
        if find(self.schema, tree, steps) is not None:
            return len(steps)
        present = len(steps)
        while present > 0 and self._np_container(steps[present - 1].info):
            present -= 1
        if present == len(steps) or (present and find(self.schema, tree, steps[:present]) is None):
            return None
        return present

    def _cut(self, tree: etree._Element, steps: tuple[Step, ...]) -> etree._Element | None:
        """`cut`, with an absent non-presence container at the end of the path there, empty."""
        present = self._present_from(tree, steps)
        if present is None:
            return None
        out = cut(self.schema, tree, steps[:present])
        holder = find(self.schema, out, steps[:present]) if present else out
        for step in steps[present:]:
            holder = etree.SubElement(holder, step.info.qname, nsmap={None: step.info.namespace})
        return out

    def _top_info(self, element: etree._Element):
        qname = etree.QName(element)
        return self.schema.child(None, qname.namespace or "", qname.localname)

    async def _write(self, req: _Request, datastore: str, steps: tuple[Step, ...]) -> web.Response:
        method = req.http.method
        params = self._params(req, ("insert", "point") if method in ("POST", "PUT") else ())
        self._check_unlocked(datastore)
        target = steps[-1].info if steps else None
        if target is not None and steps[:-1] and target.name in steps[-2].info.keys \
                and target.namespace == steps[-2].info.namespace:
            raise bad_path(f"'{target.name}' is a key of '{steps[-2].info.name}': a key cannot be written alone "
                           "(delete the entry and create it again)")
        if method == "DELETE":
            body = path_config(self.schema, steps)
            body.nodes[0].set(OPERATION_ATTR, "delete")
            return await self._commit(req, datastore, steps, body, default_op="none", must_exist=True)
        kind, fmt, content = await self._body(req, patch=method == "PATCH")
        if kind == "patch":
            return await self._yang_patch(req, datastore, steps, content, fmt)
        if method == "POST":
            body, created = self._post_body(steps, content, fmt)
            for node in body.nodes:
                node.set(OPERATION_ATTR, "create")
                self._insert_attrs(node, created, params)
            return await self._commit(req, datastore, steps, body, created=created)
        if not steps:  # the whole datastore: PUT replaces it, PATCH merges into it
            return await self._commit(req, datastore, steps, self._data_body(content, fmt),
                                      default_op="replace-all" if method == "PUT" else "merge")
        body = self._target_body(steps, content, fmt)
        body.nodes[0].set(OPERATION_ATTR, "replace" if method == "PUT" else "merge")
        if method == "PUT":
            self._insert_attrs(body.nodes[0], steps, params)
        return await self._commit(req, datastore, steps, body, must_exist=method == "PATCH")

    async def _commit(self, req: _Request, datastore: str, steps: tuple[Step, ...], body: Body, *,
                      default_op: str = "merge", must_exist: bool = False,
                      created: tuple[Step, ...] | None = None) -> web.Response:
        """Apply `body` (its nodes marked with their operation; `default_op` for the others, or
        "replace-all": the body is the new datastore) as one commit. The target is looked up in
        the datastore as the edit finds it: `must_exist` answers 404 without it (PATCH, DELETE),
        and a PUT tells creation (201) from replacement (204). `created`: the path of what a
        POST creates (201 with its Location)."""
        server = self.netconf
        existed: list[bool] = []

        def apply(before: etree._Element) -> etree._Element:
            self._check_write_conditions(req.http, datastore, before)
            if steps:
                existed.append(self._present_from(before, steps) is not None if default_op == "merge"
                               else find(self.schema, before, steps) is not None)
                if must_exist and not existed[-1]:
                    raise HttpError(404, "invalid-value", f"{uri_path(steps)} does not exist")
            if default_op == "replace-all":
                edited = empty_tree()
                edited.extend(copy.deepcopy(n) for n in body.nodes)
            else:
                try:
                    edited = apply_edit(self.schema, before, body.config, default_op)
                except RPCError as err:
                    if err.tag == "data-exists" and created is not None:  # RFC 8040 section 4.4.1
                        err.tag, err.message = "resource-denied", f"{err.message} (POST creates a new resource only)"
                    raise
            edited = self.schema.canonical(edited, config_only=True)
            server.check_write(req.session, before, edited)
            return edited
        await self._edit(req, datastore, apply)
        entity = self._entity(datastore)
        if created is not None:
            location = f"{self.url}{ROOT}{self._prefix(datastore, req)}{uri_path(created)}"
            return self._reply(req, None, status=201, entity=entity, headers={"Location": location})
        put_created = req.http.method == "PUT" and steps and not existed[-1]
        return self._reply(req, None, status=201 if put_created else 204, entity=entity)

    async def _edit(self, req: _Request, datastore: str, apply) -> None:
        server = self.netconf
        if datastore == "running":
            await server.edit_running(apply, req.session)
        else:
            server.set_candidate(apply(server.datastores["candidate"]), req.session)

    def _prefix(self, datastore: str, req: _Request) -> str:
        path = req.http.rel_url.raw_path[len(ROOT):]
        return "/data" if path.startswith("/data") else f"/ds/ietf-datastores:{datastore}"

    # --- bodies ----------------------------------------------------------------------------------

    async def _body(self, req: _Request, patch: bool) -> tuple[str, str, bytes]:
        """The request body: ("data" or "patch", its encoding, its bytes); 415 for other media."""
        content = await req.http.read()
        ctype = req.http.content_type
        kinds = {YANG_DATA_JSON: ("data", JSON), YANG_DATA_XML: ("data", XML)}
        if patch:
            kinds.update({YANG_PATCH_JSON: ("patch", JSON), YANG_PATCH_XML: ("patch", XML)})
        if self.lenient:
            kinds.update({"application/json": ("data", JSON), "application/xml": ("data", XML)})
        if ctype not in kinds or "Content-Type" not in req.http.headers:
            raise HttpError(415, "invalid-value", f"Content-Type {req.http.headers.get('Content-Type', '(none)')} is "
                            f"not one of {', '.join(kinds)}")
        if not content.strip():
            raise malformed("the request needs a body")
        kind, fmt = kinds[ctype]
        if fmt == XML:
            xml_root(content)  # well-formed, or 400 malformed-message before libyang sees it
        return kind, fmt, content

    def _qualified(self, content: bytes, parent: Step | None) -> bytes:
        return json.dumps(qualify_members(self.schema, json_members(content), parent, self.lenient)).encode()

    def _target_body(self, steps: tuple[Step, ...], content: bytes, fmt: str) -> Body:
        """A body that is the target resource itself (PUT, PATCH, a YANG Patch edit's value):
        one instance, with the keys of the path."""
        parent = steps[:-1]
        if fmt == JSON:
            content = self._qualified(content, parent[-1] if parent else None)
        body = parse_body(self.schema, parent, content, fmt)
        if len(body.nodes) != 1 or not matches(self.schema, body.nodes[0], steps[-1]):
            raise bad_path(f"the body must be the target resource {uri_path(steps)} (one instance, the keys of the "
                           "path)")
        return body

    def _data_body(self, content: bytes, fmt: str) -> Body:
        """A PUT or PATCH body of a whole datastore: {"ietf-restconf:data": {...}} or
        <data> in the ietf-restconf namespace."""
        if fmt == JSON:
            members = json_members(content)
            if set(members) != {"ietf-restconf:data"} or not isinstance(members["ietf-restconf:data"], dict):
                raise malformed('the body of a datastore is {"ietf-restconf:data": {...}}')
            content = self._qualified(json.dumps(members["ietf-restconf:data"]).encode(), None)
        else:
            root = xml_root(content)
            if root.tag != f"{{{RESTCONF_NS}}}data":
                raise malformed(f'the body of a datastore is <data xmlns="{RESTCONF_NS}">')
            content = b"".join(etree.tostring(c) for c in root if isinstance(c.tag, str))
        return parse_body(self.schema, (), content, fmt)

    def _post_body(self, steps: tuple[Step, ...], content: bytes, fmt: str) -> tuple[Body, tuple[Step, ...]]:
        """A POST body: the one child of the target to create (the body's nodes, and the path of
        the first, for Location). Leniently, the body may name the target itself: its
        children are created."""
        target = steps[-1] if steps else None
        if fmt == JSON:
            members = json_members(content)
            if self.lenient and target is not None and len(members) == 1:
                name = next(iter(members))
                module, _, local = name.rpartition(":")
                if local == target.info.name and module in ("", target.info.module) and self.schema.child(
                        target.info.schema_path, target.info.namespace, local) is None:
                    return self._post_children(steps, content)
            content = self._qualified(content, target)
        body = parse_body(self.schema, steps, content, fmt)
        if len(body.nodes) != 1:
            raise malformed(f"a POST body holds the one resource to create, not {len(body.nodes)}")
        return body, self._child_steps(steps, body.nodes[0])

    def _post_children(self, steps: tuple[Step, ...], content: bytes) -> tuple[Body, tuple[Step, ...]]:
        body = self._target_body(steps, content, JSON)
        holder = body.nodes[0]
        keys = {f"{{{steps[-1].info.namespace}}}{k}" for k in steps[-1].info.keys}
        children = [c for c in holder if isinstance(c.tag, str) and c.tag not in keys]
        if not children:
            raise malformed(f"the body names {steps[-1].info.name} but no child of it to create")
        return Body(body.config, children), self._child_steps(steps, children[0])

    def _child_steps(self, steps: tuple[Step, ...], element: etree._Element) -> tuple[Step, ...]:
        qname = etree.QName(element)
        info = self.schema.child(steps[-1].info.schema_path if steps else None, qname.namespace or "", qname.localname)
        if info.keyword == "list":
            values = tuple(text_value(self.schema, element.find(f"{{{info.namespace}}}{k}")) for k in info.keys)
        elif info.keyword == "leaf-list":
            values = (text_value(self.schema, element),)
        else:
            values = ()
        return steps + (Step(info, values),)

    def _insert_attrs(self, node: etree._Element, steps: tuple[Step, ...], params: dict[str, str]) -> None:
        """RFC 8040 sections 4.8.5 and 4.8.6: insert (first, last, before, after) and point (the
        sibling, as a data resource path) for an ordered-by-user list or leaf-list entry."""
        where = params.get("insert")
        if where is None:
            if "point" in params:
                raise bad_path("point needs insert=before or insert=after")
            return
        info = steps[-1].info
        if info.keyword not in ("list", "leaf-list") or not info.ordered_by_user:
            raise bad_path(f"insert: '{info.name}' is not an ordered-by-user list or leaf-list")
        if where not in ("first", "last", "before", "after"):
            raise bad_path(f"insert '{where}' is not first, last, before or after")
        node.set(INSERT_ATTR, where)
        if where in ("first", "last"):
            if "point" in params:
                raise bad_path(f"insert={where} takes no point")
            return
        if "point" not in params:
            raise bad_path(f"insert={where} needs a point")
        point = canonical_steps(self.schema, resolve(self.schema, edit_segments(params["point"], "point")))
        self._set_anchor(node, steps, point)

    def _set_anchor(self, node: etree._Element, steps: tuple[Step, ...], point: tuple[Step, ...]) -> None:
        info = steps[-1].info
        if point[-1].info != info or point[:-1] != steps[:-1]:
            raise bad_path(f"point {uri_path(point)} is not an entry of the same {info.keyword} as {uri_path(steps)}")
        if info.keyword == "list":
            node.set(KEY_ATTR, "".join(f"[{k}='{v}']" for k, v in zip(info.keys, point[-1].values)))
        else:
            node.set(VALUE_ATTR, point[-1].values[0])

    # --- YANG Patch (RFC 8072) -------------------------------------------------------------------

    async def _yang_patch(self, req: _Request, datastore: str, steps: tuple[Step, ...], content: bytes,
                          fmt: str) -> web.Response:
        patch = parse_patch(content, fmt)
        prepared: list[tuple[str, Body, str, tuple[Step, ...] | None]] = []
        for edit in patch.edits:
            try:
                prepared.append((edit.edit_id, *self._patch_edit(steps, edit, fmt)))
            except RPCError as err:
                return self._patch_reply(req, patch.patch_id, edit_errors=(edit.edit_id, err))
        server = self.netconf

        def apply(before: etree._Element) -> etree._Element:
            self._check_write_conditions(req.http, datastore, before)
            tree = before
            for edit_id, body, default_op, moved in prepared:
                try:
                    if moved is not None and find(self.schema, tree, moved) is None:
                        raise RPCError("data-missing", f"cannot move {uri_path(moved)}: it does not exist",
                                       path=data_path(moved))
                    tree = apply_edit(self.schema, tree, body.config, default_op)
                except RPCError as err:
                    raise _EditFailed(edit_id, err) from None
            tree = self.schema.canonical(tree, config_only=True)
            server.check_write(req.session, before, tree)
            return tree
        try:
            await self._edit(req, datastore, apply)
        except _EditFailed as failed:
            return self._patch_reply(req, patch.patch_id, edit_errors=(failed.edit_id, failed.err))
        except HttpError as err:
            return self._patch_reply(req, patch.patch_id, global_errors=err.errors, status=err.status)
        except RPCError as err:
            return self._patch_reply(req, patch.patch_id, global_errors=err.errors if isinstance(err, RPCErrorList)
                                     else [err])
        return self._patch_reply(req, patch.patch_id, entity=self._entity(datastore))

    def _patch_edit(self, base: tuple[Step, ...], edit, fmt: str) -> tuple[Body, str, tuple[Step, ...] | None]:
        """One edit of a YANG Patch as a body, its default operation, and for a move the entry
        that must exist (a merge with an insert attribute moves it, but would create it)."""
        steps = canonical_steps(self.schema, resolve(self.schema, edit_segments(edit.target), base))
        if not steps:
            raise bad_path("an edit's target must be a data resource, not the whole datastore")
        if edit.operation in ("delete", "remove", "move"):
            body = path_config(self.schema, steps)
            node = body.nodes[0]
            node.set(OPERATION_ATTR, {"move": "merge"}.get(edit.operation, edit.operation))
            default_op = "none"
        else:
            body = self._target_body(steps, edit.value, fmt)
            node = body.nodes[0]
            node.set(OPERATION_ATTR, {"insert": "create"}.get(edit.operation, edit.operation))
            default_op = "merge"
        if edit.operation in ("insert", "move"):
            info = steps[-1].info
            if info.keyword not in ("list", "leaf-list") or not info.ordered_by_user:
                raise bad_path(f"edit '{edit.edit_id}': {edit.operation} needs an ordered-by-user list or leaf-list")
            node.set(INSERT_ATTR, edit.where)
            if edit.where in ("before", "after"):
                point = canonical_steps(self.schema, resolve(self.schema, edit_segments(edit.point, "point"), base))
                self._set_anchor(node, steps, point)
        return body, default_op, steps if edit.operation == "move" else None

    def _patch_reply(self, req: _Request, patch_id: str, *, global_errors: list[RPCError] | None = None,
                     edit_errors: tuple[str, RPCError] | None = None, status: int | None = None,
                     entity: _Entity | None = None) -> web.Response:
        errors = global_errors or ([edit_errors[1]] if edit_errors else [])
        if errors and status is None:
            status = STATUS_OF_TAG.get(errors[0].tag, 500)
        if edit_errors is not None:
            err = edit_errors[1]
            edit_errors = (edit_errors[0], err.errors if isinstance(err, RPCErrorList) else [err])
        body = patch_status(self.schema, patch_id, req.fmt, global_errors=global_errors, edit_errors=edit_errors)
        return self._reply(req, body, status=status or 200, entity=entity)

    # --- operations ------------------------------------------------------------------------------

    async def _operations(self, req: _Request, segments: list[str]) -> web.StreamResponse:
        method = req.http.method
        if not segments:
            self._allow(method, ("GET", "HEAD", "OPTIONS"))
            self._no_params(req)
            if method == "OPTIONS":
                return self._options(("GET", "HEAD", "OPTIONS"))
            return self._reply(req, self._operation_list(req.fmt))
        if len(segments) != 1:
            raise HttpError(404, "invalid-value", f"no operation {'/'.join(segments)}")
        self._allow(method, ("POST", "OPTIONS"))
        module, _, name = segments[0].partition(":")
        namespace = self.schema.namespace_of_module(module) if name else None
        info = self.schema.child(None, namespace, name) if namespace else None
        if info is None or info.keyword != "rpc":
            raise HttpError(404, "invalid-value", f"no operation '{segments[0]}' (module:rpc)")
        if method == "OPTIONS":
            return self._options(("POST", "OPTIONS"))
        if (module, name) in _CANDIDATE_OPERATIONS:
            self._no_params(req)
            self.netconf.check_exec(req.session, module, name)
            await _CANDIDATE_OPERATIONS[(module, name)](self, req)
            return self._reply(req, None, status=204)
        return await self._invoke(req, (), info)

    def _operation_list(self, fmt: str) -> bytes:
        rpcs = [(module, snode.name(), ns) for module, _, ns in self.schema.module_list if module in self.schema.modules
                for snode in self.schema.ctx.get_module(module).children() if snode.keyword() == "rpc"]
        rpcs += [("ietf-netconf", name, BASE_NS) for _, name in _CANDIDATE_OPERATIONS]
        if fmt == JSON:
            return json.dumps({"ietf-restconf:operations": {f"{m}:{n}": [None] for m, n, _ in rpcs}}).encode()
        root = etree.Element(f"{{{RESTCONF_NS}}}operations", nsmap={None: RESTCONF_NS})
        for _, name, uri in rpcs:
            etree.SubElement(root, f"{{{uri}}}{name}", nsmap={None: uri})
        return etree.tostring(root)

    async def _invoke(self, req: _Request, steps: tuple[Step, ...], info) -> web.Response:
        """An RPC (`info`) or an action (the last of `steps`): 200 with its output, 204 when it
        has none."""
        self._no_params(req)
        content = await req.http.read()
        fmt = req.fmt
        if content.strip():
            _, fmt, content = await self._body(req, patch=False)
        operation = operation_input(self.schema, steps, info, content, fmt, self.lenient)
        if steps:
            output = await self.netconf.call_action(req.session, operation)
        else:
            output = await self.netconf.call_rpc(req.session, operation)
        if isinstance(output, bytes):
            output = list(etree.fromstring(b"<w>" + output + b"</w>"))
        elif isinstance(output, etree._Element):
            output = [output]
        if not output:
            return self._reply(req, None, status=204)
        body = operation_output(self.schema, steps, info, output, req.fmt)
        return self._reply(req, bare_top_member(body) if req.bare else body)

    async def _commit_candidate(self, req: _Request) -> None:
        self._check_unlocked("running")
        await self.netconf.commit(req.session, False, 0, None, None)

    async def _discard_candidate(self, req: _Request) -> None:
        self._check_unlocked("candidate")
        self.netconf.discard_changes()

    # --- event streams (RFC 8040 section 6) ------------------------------------------------------

    def _event(self, event: Event) -> None:
        for queue in list(self._streams):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a client that does not read: its stream ends
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    async def _stream(self, req: _Request, encoding: str) -> web.StreamResponse:
        """The NETCONF stream as Server-Sent Events, one notification per event (encoded as
        `encoding`), NACM and the filter applied per event; start-time replays from the
        server's replay buffer, stop-time ends the stream, and so does falling STREAM_BACKLOG
        events behind."""
        params = self._params(req, _STREAM_PARAMS)
        start = parse_time(params["start-time"], "start-time") if "start-time" in params else None
        stop = parse_time(params["stop-time"], "stop-time") if "stop-time" in params else None
        if stop is not None and start is None:
            raise bad_path("stop-time needs start-time")
        if start is not None and start > now():
            raise bad_path("start-time is in the future")
        flt = self._stream_filter(params["filter"]) if "filter" in params else None
        user = req.session.username
        if self._user_streams.get(user, 0) >= self.limits.max_streams_per_user:
            raise RPCError("resource-denied", f"user '{user}' has {self.limits.max_streams_per_user} event streams "
                           "open, this server's limit per user; close one first", type="application")
        self._user_streams[user] = self._user_streams.get(user, 0) + 1
        queue: asyncio.Queue = asyncio.Queue(STREAM_BACKLOG)
        self._streams.add(queue)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await response.prepare(req.http)
            await response.write(b": the NETCONF stream\n\n")  # an SSE comment: the client has its headers now
            backlog = self.netconf.replay.between(start, stop) if start is not None else []
            for event in backlog:
                await self._send_event(response, req, event, encoding, flt)
            replayed = {id(event) for event in backlog}  # those that came while the stream started
            while self._serving:
                timeout = self.limits.stream_heartbeat
                if stop is not None:
                    timeout = min(timeout, (stop - now()).total_seconds())
                    if timeout <= 0:
                        break
                try:
                    async with asyncio.timeout(timeout):
                        event = await queue.get()
                except TimeoutError:  # the stop-time, or a heartbeat: is the client still there?
                    transport = req.http.transport
                    if (stop is not None and now() >= stop) or transport is None or transport.is_closing():
                        break
                    await response.write(b": heartbeat\n\n")
                    continue
                if event is None:
                    break
                if stop is not None and event.time > stop:
                    break
                if id(event) in replayed:
                    continue
                await self._send_event(response, req, event, encoding, flt)
        except ConnectionError:  # the client went away
            pass
        finally:
            self._streams.discard(queue)
            self._user_streams[user] -= 1
            if not self._user_streams[user]:
                del self._user_streams[user]
        return response

    def _stream_filter(self, select: str) -> etree.XPath:
        """RFC 8040 section 4.8.4: an XPath 1.0 expression, prefixes being module names,
        evaluated with the notification's element as the document's (a non-empty result sends
        it). lxml evaluates it: a notification is no data tree for libyang."""
        try:
            xpath = etree.XPath(select, namespaces={m: ns for m, _, ns in self.schema.module_list})
            xpath(etree.ElementTree(etree.Element("probe")))
        except (etree.XPathSyntaxError, etree.XPathEvalError) as err:
            raise bad_path(f"filter '{select}' is not an XPath 1.0 expression over this server's modules: {err}")
        return xpath

    async def _send_event(self, response: web.StreamResponse, req: _Request, event: Event, encoding: str,
                          flt: etree.XPath | None) -> None:
        if not self.netconf.may_notify(req.session, event):
            return
        if flt is not None and not flt(etree.ElementTree(copy.deepcopy(event.content))):
            return
        if encoding == XML:
            data = event.to_xml()
        else:
            data = encode_notification(self.schema, event.content, event.time.isoformat())
        await response.write(b"".join(b"data: " + line + b"\n" for line in data.splitlines()) + b"\n")

    # --- ietf-restconf-monitoring --------------------------------------------------------------

    async def _restconf_state(self) -> etree._Element | None:
        if not self._serving:
            return None
        m = lambda tag: f"{{{MONITORING_NS}}}{tag}"
        root = empty_tree()
        state = etree.SubElement(root, m("restconf-state"), nsmap={None: MONITORING_NS})
        capabilities = etree.SubElement(state, m("capabilities"))
        for uri in CAPABILITIES:
            etree.SubElement(capabilities, m("capability")).text = uri
        stream = etree.SubElement(etree.SubElement(state, m("streams")), m("stream"))
        etree.SubElement(stream, m("name")).text = STREAM
        etree.SubElement(stream, m("description")).text = "the server's notifications (RFC 5277 NETCONF stream)"
        etree.SubElement(stream, m("replay-support")).text = "true"
        etree.SubElement(stream, m("replay-log-creation-time")).text = self.netconf.replay.created.isoformat()
        for encoding in (JSON, XML):
            access = etree.SubElement(stream, m("access"))
            etree.SubElement(access, m("encoding")).text = encoding
            etree.SubElement(access, m("location")).text = f"{self.url}{ROOT}/streams/{STREAM}/{encoding}"
        return root

    # --- HTTP details ----------------------------------------------------------------------------

    def _host_meta(self, request: web.Request) -> web.Response:
        """RFC 8040 section 3.1: where the RESTCONF root is (no authentication needed)."""
        if request.method not in ("GET", "HEAD"):
            raise HttpError(405, "operation-not-supported", f"{request.method} is not allowed here",
                            headers={"Allow": "GET, HEAD"})
        body = f"<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'><Link rel='restconf' href='{ROOT}'/></XRD>"
        return web.Response(body=None if request.method == "HEAD" else body.encode(),
                            headers={"Content-Type": "application/xrd+xml"})

    def _root(self, req: _Request) -> web.Response:
        if req.fmt == JSON:
            return self._reply(req, json.dumps({"ietf-restconf:restconf": {
                "data": {}, "operations": {}, "yang-library-version": YANG_LIBRARY_VERSION}}).encode())
        root = etree.Element(f"{{{RESTCONF_NS}}}restconf", nsmap={None: RESTCONF_NS})
        for tag in ("data", "operations"):
            etree.SubElement(root, f"{{{RESTCONF_NS}}}{tag}")
        etree.SubElement(root, f"{{{RESTCONF_NS}}}yang-library-version").text = YANG_LIBRARY_VERSION
        return self._reply(req, etree.tostring(root))

    def _reply_format(self, request: web.Request) -> tuple[str, bool]:
        """The reply's encoding from Accept (RFC 8040 section 5.2), and whether it is lenient
        (bare top-level names: a client that did not ask for yang-data+json)."""
        accept = request.headers.get("Accept", "").strip()
        request_fmt = {YANG_DATA_XML: XML, YANG_PATCH_XML: XML, "application/xml": XML}.get(request.content_type, JSON) \
            if "Content-Type" in request.headers else JSON
        if not accept:
            return request_fmt, self.lenient and request_fmt == JSON
        ranges = []
        for position, item in enumerate(accept.split(",")):
            media, *parameters = [part.strip() for part in item.split(";")]
            quality = 1.0
            for parameter in parameters:
                name, _, value = parameter.partition("=")
                if name.strip() == "q":
                    try:
                        quality = float(value)
                    except ValueError:
                        quality = 0.0
            if quality > 0:
                ranges.append((-quality, position, media.lower()))
        for _, _, media in sorted(ranges):
            if media == YANG_DATA_JSON:
                return JSON, False
            if media == YANG_DATA_XML:
                return XML, False
            if self.lenient and media == "application/json":
                return JSON, True
            if self.lenient and media == "application/xml":
                return XML, False
            if media in ("*/*", "application/*"):
                return request_fmt, self.lenient and request_fmt == JSON
        raise HttpError(406, "invalid-value", f"cannot answer in {accept}: this server writes "
                        f"{YANG_DATA_JSON} and {YANG_DATA_XML}")

    def _reply(self, req: _Request, body: bytes | None, *, status: int = 200, entity: _Entity | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        out = {"Cache-Control": "no-cache", **(headers or {})}
        if body is not None:
            out["Content-Type"] = "application/json" if req.bare else MEDIA[req.fmt]
        if entity is not None:
            out.update(self._entity_headers(entity))
        return web.Response(status=status, body=body, headers=out)

    @staticmethod
    def _entity_headers(entity: _Entity) -> dict[str, str]:
        return {"ETag": entity.etag, "Last-Modified": email.utils.format_datetime(entity.modified, usegmt=True)}

    def _error_response(self, request: web.Request, status: int, errors: list[RPCError], fmt: str,
                        headers: dict[str, str] | None = None) -> web.Response:
        body = error_body(self.schema, errors, fmt)
        return web.Response(status=status, body=None if request.method == "HEAD" else body,
                            headers={"Content-Type": MEDIA[fmt], "Cache-Control": "no-cache", **(headers or {})})

    @staticmethod
    def _allow(method: str, allowed: tuple[str, ...]) -> None:
        if method not in allowed:
            raise HttpError(405, "operation-not-supported", f"{method} is not allowed on this resource "
                            f"(allowed: {', '.join(allowed)})", headers={"Allow": ", ".join(allowed)})

    @staticmethod
    def _options(allowed: tuple[str, ...], patch: bool = False) -> web.Response:
        headers = {"Allow": ", ".join(allowed)}
        if patch:
            headers["Accept-Patch"] = ", ".join((YANG_DATA_JSON, YANG_DATA_XML, YANG_PATCH_JSON, YANG_PATCH_XML))
        return web.Response(status=200, headers=headers)

    def _params(self, req: _Request, allowed: tuple[str, ...], streams_only: tuple[str, ...] = ()) -> dict[str, str]:
        """The query parameters, each at most once (RFC 8040 section 4.8); others are 400."""
        out: dict[str, str] = {}
        for name, value in _query(req.http.rel_url.raw_query_string):
            if name in streams_only:
                raise bad_path(f"query parameter '{name}' is only for event streams")
            if name not in allowed:
                raise bad_path(f"query parameter '{name}' is not supported on this request"
                               + (f" (supported: {', '.join(allowed)})" if allowed else ""))
            if name in out:
                raise bad_path(f"query parameter '{name}' is given twice")
            out[name] = value
        return out

    def _no_params(self, req: _Request) -> None:
        self._params(req, ())

    def _check_unlocked(self, datastore: str) -> None:
        owner = self.netconf.locks.get(datastore)
        if owner is not None:
            raise RPCError("in-use", f"the {datastore} datastore is locked by NETCONF session {owner}",
                           type="protocol", info={"session-id": str(owner)})

    def _entity(self, datastore: str) -> _Entity:
        """The entity tag and last change of a configuration datastore, computed once per tree
        (trees are replaced whole, never changed in place)."""
        tree = self.netconf.datastores[datastore]
        known = self._entities.get(datastore)
        if known is not None and known.tree is tree:
            return known
        etag = '"' + hashlib.sha256(etree.tostring(tree)).hexdigest()[:24] + '"'
        if known is not None and known.etag == etag:
            known.tree = tree
            return known
        entity = self._entities[datastore] = _Entity(tree, etag, now().replace(microsecond=0))
        return entity

    def _check_read_conditions(self, request: web.Request, entity: _Entity) -> None:
        none_match = request.headers.get("If-None-Match")
        if none_match is not None:
            if _etag_listed(none_match, entity.etag):
                raise _NotModified(entity)
        elif request.if_modified_since is not None and entity.modified <= request.if_modified_since:
            raise _NotModified(entity)

    def _check_write_conditions(self, request: web.Request, datastore: str, before: etree._Element) -> None:
        """If-Match and If-Unmodified-Since against the datastore as the edit finds it (412)."""
        if_match = request.headers.get("If-Match")
        unmodified = request.if_unmodified_since
        if if_match is None and unmodified is None:
            return
        entity = self._entity(datastore)
        if if_match is not None and not _etag_listed(if_match, entity.etag):
            raise HttpError(412, "operation-failed", f"If-Match {if_match}: the {datastore} datastore's entity tag is "
                            f"{entity.etag}")
        if unmodified is not None and entity.modified > unmodified:
            raise HttpError(412, "operation-failed", f"the {datastore} datastore changed after "
                            f"{email.utils.format_datetime(unmodified, usegmt=True)}")


class _Handler(RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse as RESTCONF does:
    ietf-restconf:errors, 431 for a header over the limits (RFC 6585 section 5), 400
    malformed-message for the rest, logged once per interval rather than with a traceback."""

    def __init__(self, restconf: RestconfServer, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.restconf = restconf

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, BadHttpMessage):
            return super().handle_error(request, status, exc, message)
        too_big = isinstance(exc, LineTooLong) or "Too many headers" in str(exc)
        self.restconf._overload_log.warning("%s: RESTCONF request not parsed: %s", self.restconf.netconf.name,
                                            "header over the limits" if too_big else exc.message)
        limits = self.restconf.limits
        text = (f"the request's header is over this server's limits ({limits.max_header_line} bytes a line, "
                f"{limits.max_headers} fields)" if too_big else f"not an HTTP request: {exc.message}")
        body = error_body(self.restconf.schema, [RPCError("too-big" if too_big else "malformed-message", text,
                                                          type="transport")], JSON)
        response = web.Response(status=431 if too_big else 400, body=body, headers={"Content-Type": YANG_DATA_JSON})
        response.force_close()  # what follows on the connection cannot be told apart
        return response


class _Refusal(asyncio.Protocol):
    """A connection over the limit: the 503 reply, then closed (after the client's own close,
    or a second, so that it reads the reply rather than a reset)."""

    def __init__(self, reply: bytes):
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.reply)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(1.0, transport.close)

    def data_received(self, data: bytes) -> None:
        """What the client sent is not read."""

    def eof_received(self) -> bool:
        return False  # close


class _NotModified(HttpError):
    def __init__(self, entity: _Entity):
        super().__init__(304, "operation-failed", "not modified")
        self.entity = entity


_CANDIDATE_OPERATIONS = {("ietf-netconf", "commit"): RestconfServer._commit_candidate,
                         ("ietf-netconf", "discard-changes"): RestconfServer._discard_candidate}


def _query(raw: str) -> list[tuple[str, str]]:
    """The query parameters, percent-decoded ('+' is a plus: RFC 3986, not a form), except
    point, a data resource path whose segments are decoded once split (RFC 8040 4.8.6)."""
    out = []
    for item in raw.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        name = urllib.parse.unquote(name)
        out.append((name, value if name == "point" else urllib.parse.unquote(value)))
    return out


def _depth(text: str) -> int | None:
    if text == "unbounded":
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise bad_path(f"depth '{text}' is not unbounded or 1..65535")
    return int(text)


def _etag_listed(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
