"""The KM-to-KM protocol (docs/km-protocol.md): how key managers relay keys to each other over
the network, HTTPS with mutual TLS, JSON bodies.

    GET  /api/v1/kms/links/{link_id}/tail   where the receiver's pool of the link starts
    POST /api/v1/kms/reserve                bits of the link's key to send under (from its allocator)
    POST /api/v1/kms/plan                   check the rest of a relay, hop by hop
    POST /api/v1/kms/relay                  one-time-pad ciphertexts of keys for one hop
    POST /api/v1/kms/discard                bits of the link's key the sender threw away

`KmPeerApi` answers them for one `KeyManager`; its routes are mounted on the key manager's
ETSI 014 server (devices/etsi014.py), which requires a client certificate of the CA: the
calling key manager is its certificate's subject common name, never a field of the body, and a
message on a link is taken only from the link's configured peer (`KeyManager.handle`).
`KmPeerClient` is the sending side (a `devices.keystore.PeerChannel`): one connection pool per
peer, at the address the configuration gives it, with the peer's km-id as the TLS server name,
so that the peer's certificate must name it (a DNS subject alternative name) before any byte
of a request leaves. A peer that cannot be reached, or that answers garbage, is
`PeerUnreachable("key manager X is unreachable: ...")`; a peer's KeyServiceError is raised
again here as the same class with the same message and details.

Only with `insecure` (the devices' insecure_sae_header mode: plain HTTP on loopback, tests)
does the caller name itself in the `X-KM-ID` header instead: anyone can then pose as any key
manager.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
import urllib.parse
from typing import Any, Callable

import aiohttp
from aiohttp import web

from devices.etsi014 import BodyTooLarge, certificate_name, json_object
from devices.keystore import (SERVICE_ERRORS, BadKeyRequest, DiscardMessage, Hop, KeyManager, KeyServiceError,
                              KeyUnavailable, NoRoute, PeerMessage, PeerRefused, PeerUnreachable, Plan, PlanAnswer,
                              PlanRequest, RelayMessage, ReserveRequest, RoutingLoop, StateWriteError, TailQuery,
                              UnknownSAE, shown)

log = logging.getLogger(__name__)

API = "/api/v1/kms"
KM_HEADER = "X-KM-ID"
MAX_BODY_BYTES = 1024 * 1024   # a relay of 128 keys of 8192 bits is about 180 KiB of JSON
MAX_RELAY_KEYS = 1024
MAX_HOPS = 64                  # a plan's visited key managers
MAX_NAME = 256
MAX_BITS = 1 << 62
TIMEOUT_S = 10.0
ERRORS: dict[str, type[KeyServiceError]] = {**SERVICE_ERRORS, BodyTooLarge.__name__: BodyTooLarge}
_STATUS: tuple[tuple[type[KeyServiceError], int], ...] = (
    (BadKeyRequest, 400), (UnknownSAE, 401), (PeerRefused, 403), (NoRoute, 404), (RoutingLoop, 409),
    (BodyTooLarge, 413), (StateWriteError, 503), (KeyUnavailable, 503))


def status_of(error: KeyServiceError) -> int:
    return next((status for cls, status in _STATUS if isinstance(error, cls)), 500)


def error_body(error: KeyServiceError) -> dict:
    return {"error": type(error).__name__, "message": error.message, "details": error.details}


def client_ssl_context(certfile: str, keyfile: str, cafile: str) -> ssl.SSLContext:
    """TLS >= 1.2 presenting a key manager's certificate and trusting the CA in `cafile`;
    the peer's certificate must name the km-id the client expects (hostname check)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


# -- the receiving side ------------------------------------------------------------------------

class KmPeerApi:
    """The KM-to-KM routes of `km`: with `insecure`, the caller is the X-KM-ID header (plain
    HTTP); otherwise its client certificate's common name."""

    def __init__(self, km: KeyManager, *, insecure: bool = False, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.km = km
        self.insecure = insecure
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[web.RouteDef]:
        return [web.get(f"{API}/links/{{link_id}}/tail", self._tail),
                web.post(f"{API}/reserve", self._reserve),
                web.post(f"{API}/plan", self._plan),
                web.post(f"{API}/relay", self._relay),
                web.post(f"{API}/discard", self._discard)]

    async def _tail(self, request: web.Request) -> web.Response:
        return await self._serve(request, lambda body: TailQuery(_name(request.match_info, "link_id")), read=False)

    async def _reserve(self, request: web.Request) -> web.Response:
        return await self._serve(request, _reserve_request)

    async def _plan(self, request: web.Request) -> web.Response:
        return await self._serve(request, _plan_request)

    async def _relay(self, request: web.Request) -> web.Response:
        return await self._serve(request, _relay_message)

    async def _discard(self, request: web.Request) -> web.Response:
        return await self._serve(request, _discard_message)

    async def _serve(self, request: web.Request, parse: Callable[[dict], PeerMessage],
                     read: bool = True) -> web.Response:
        try:
            caller = self._caller(request)
            message = parse(await json_object(request, self.max_body_bytes) if read else {})
            answer = await self.km.handle(caller, message)
        except KeyServiceError as error:
            return web.json_response(error_body(error), status=status_of(error))
        return web.json_response(_answer_json(message, answer))

    def _caller(self, request: web.Request) -> str:
        if self.insecure:
            caller = request.headers.get(KM_HEADER, "")
            if not caller:
                raise PeerRefused(f"no key manager identity: send the {KM_HEADER} header")
            return caller
        name = certificate_name(request)
        if not name:
            raise PeerRefused("the client certificate names no key manager (no subject common name)")
        return name


def _fields(body: dict, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise BadKeyRequest(f"unknown field(s) {', '.join(shown(u) for u in unknown[:5])}; expected "
                            f"{', '.join(required + optional)}")
    missing = [name for name in required if name not in body]
    if missing:
        raise BadKeyRequest(f"missing field(s) {', '.join(missing)}")


def _name(body: Any, field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise BadKeyRequest(f"{field} must be a name of 1 to {MAX_NAME} printable characters, got {shown(value)}")
    return value


def _int(body: dict, field: str, most: int, multiple: int = 1) -> int:
    value = body.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most or value % multiple:
        what = f"a multiple of {multiple} " if multiple > 1 else "an integer "
        raise BadKeyRequest(f"{field} must be {what}from 0 to {most}, got {shown(value)}")
    return value


def _reserve_request(body: dict) -> ReserveRequest:
    _fields(body, ("link_id", "bits", "not_before"))
    bits = _int(body, "bits", MAX_BITS, 8)
    if not bits:
        raise BadKeyRequest("bits must be more than 0")
    return ReserveRequest(_name(body, "link_id"), bits, _int(body, "not_before", MAX_BITS, 8))


def _plan_request(body: dict) -> PlanRequest:
    _fields(body, ("link_id", "destination_km", "bits", "visited"), ("master_SAE_ID", "slave_SAE_ID", "number"))
    visited = body["visited"]
    if not isinstance(visited, list) or not 0 < len(visited) <= MAX_HOPS:
        raise BadKeyRequest(f"visited must be a list of 1 to {MAX_HOPS} key manager ids, got {shown(visited)}")
    names = tuple(_name({"visited": v}, "visited") for v in visited)
    pair = [body.get(f) for f in ("master_SAE_ID", "slave_SAE_ID")]
    if (pair[0] is None) != (pair[1] is None):
        raise BadKeyRequest("master_SAE_ID and slave_SAE_ID go together")
    master, slave = (_name(body, "master_SAE_ID"), _name(body, "slave_SAE_ID")) if pair[0] is not None else (None, None)
    number = _int(body, "number", 1 << 31) if "number" in body else 0
    if number and master is None:
        raise BadKeyRequest("number needs master_SAE_ID and slave_SAE_ID")
    return PlanRequest(_name(body, "link_id"), _name(body, "destination_km"), _int(body, "bits", MAX_BITS, 8), names,
                       master, slave, number)


def _relay_message(body: dict) -> RelayMessage:
    _fields(body, ("link_id", "offset", "destination_km", "master_SAE_ID", "slave_SAE_ID", "keys"))
    keys = body["keys"]
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_RELAY_KEYS:
        raise BadKeyRequest(f"keys must be a list of 1 to {MAX_RELAY_KEYS} objects, got {shown(keys)}")
    ids, ciphertexts = [], []
    for i, entry in enumerate(keys):
        if not isinstance(entry, dict) or set(entry) != {"key_ID", "ciphertext"}:
            raise BadKeyRequest(f"keys[{i}] must be an object with key_ID and ciphertext, got {shown(entry)}")
        ids.append(_name(entry, "key_ID"))
        try:
            ciphertext = base64.b64decode(entry["ciphertext"], validate=True) \
                if isinstance(entry["ciphertext"], str) else b""
        except (binascii.Error, ValueError):
            ciphertext = b""
        if not ciphertext:
            raise BadKeyRequest(f"keys[{i}].ciphertext must be non-empty base64, got {shown(entry['ciphertext'])}")
        ciphertexts.append(ciphertext)
    return RelayMessage(_name(body, "link_id"), _int(body, "offset", MAX_BITS, 8), _name(body, "destination_km"),
                        _name(body, "master_SAE_ID"), _name(body, "slave_SAE_ID"), tuple(ids), tuple(ciphertexts))


def _discard_message(body: dict) -> DiscardMessage:
    _fields(body, ("link_id", "offset", "bits"))
    bits = _int(body, "bits", MAX_BITS, 8)
    if not bits:
        raise BadKeyRequest("bits must be more than 0")
    return DiscardMessage(_name(body, "link_id"), _int(body, "offset", MAX_BITS, 8), bits)


def _answer_json(message: PeerMessage, answer: object) -> dict:
    if answer is None:
        return {}
    if isinstance(answer, int):
        return {"offset": answer} if isinstance(message, ReserveRequest) else {"tail": answer}
    assert isinstance(answer, PlanAnswer)
    if answer.error is not None:
        return {"tail": answer.tail, "error": error_body(answer.error)}
    assert answer.plan is not None
    return {"tail": answer.tail, "room": answer.plan.room, "max_stored_keys": answer.plan.max_stored_keys,
            "hops": [{"from_km": h.from_km, "to_km": h.to_km, "link_id": h.link_id,
                      "available_bits": h.available_bits, "max_bits": h.max_bits, "rate_bps": h.rate_bps}
                     for h in answer.plan.hops]}


# -- the sending side --------------------------------------------------------------------------

class KmPeerClient:
    """The PeerChannel of key manager `km_id` over HTTPS: `address_of(peer)` is the base URL
    of the peer's API (from the configuration), `ssl_context` presents this key manager's
    certificate (None: plain HTTP with the X-KM-ID header, the insecure mode)."""

    def __init__(self, km_id: str, ssl_context: ssl.SSLContext | None, address_of: Callable[[str], str | None],
                 timeout_s: float = TIMEOUT_S) -> None:
        self.km_id = km_id
        self.ssl_context = ssl_context
        self.address_of = address_of
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._sessions: dict[str, tuple[str, aiohttp.ClientSession]] = {}   # peer -> (base URL, session)
        self._closed = False

    async def close(self) -> None:
        """Close every session; a send after this (one in flight as the key manager stops)
        finds the peer unreachable rather than opening a session nobody closes."""
        self._closed = True
        sessions, self._sessions = self._sessions, {}
        for _, session in sessions.values():
            await session.close()

    async def _session(self, peer: str, base: str) -> aiohttp.ClientSession:
        if self._closed:
            raise _unreachable(peer, f"key manager {self.km_id} is stopping")
        current = self._sessions.get(peer)
        if current is not None and current[0] == base:
            return current[1]
        if current is not None:
            await current[1].close()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context or False),
                                        timeout=self.timeout)
        self._sessions[peer] = (base, session)
        return session

    async def send(self, sender: str, km_id: str, message: PeerMessage) -> object:
        base = self.address_of(km_id)
        if not base:
            raise _unreachable(km_id, f"key manager {sender} has no address for it (qi-key-manager peers)")
        method, path, body = _request(message)
        session = await self._session(km_id, base.rstrip("/"))
        headers = {KM_HEADER: sender} if self.ssl_context is None else {}
        extra = {"server_hostname": km_id} if self.ssl_context is not None else {}
        try:
            async with session.request(method, f"{base.rstrip('/')}{path}", json=body, headers=headers,
                                       **extra) as response:
                raw = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    raw += chunk
                    if len(raw) > MAX_BODY_BYTES:
                        raise ValueError(f"an answer of more than {MAX_BODY_BYTES} bytes")
                status = response.status
            data = json.loads(bytes(raw))
            if not isinstance(data, dict):
                raise ValueError("the answer is not a JSON object")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, RecursionError) as exc:
            raise _unreachable(km_id, str(exc) or type(exc).__name__) from None
        if status != 200:
            raise _error(km_id, data)
        try:
            return _answer(message, data, km_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise _unreachable(km_id, f"a malformed answer ({exc})") from None


def _unreachable(km_id: str, reason: str) -> PeerUnreachable:
    """The error of a peer that cannot be reached; why is in its details (and the log)."""
    log.info("key manager %s is unreachable: %s", km_id, reason)
    return PeerUnreachable(f"key manager {km_id} is unreachable", [{"km": km_id, "reason": reason[:1024]}])


def _request(message: PeerMessage) -> tuple[str, str, dict | None]:
    if isinstance(message, TailQuery):
        return "GET", f"{API}/links/{urllib.parse.quote(message.link_id, safe='')}/tail", None
    if isinstance(message, ReserveRequest):
        return "POST", f"{API}/reserve", {"link_id": message.link_id, "bits": message.bits,
                                          "not_before": message.not_before}
    if isinstance(message, PlanRequest):
        body: dict[str, Any] = {"link_id": message.link_id, "destination_km": message.destination_km,
                                "bits": message.bits, "visited": list(message.visited)}
        if message.master_sae and message.slave_sae:
            body.update({"master_SAE_ID": message.master_sae, "slave_SAE_ID": message.slave_sae,
                         "number": message.number})
        return "POST", f"{API}/plan", body
    if isinstance(message, RelayMessage):
        return "POST", f"{API}/relay", {
            "link_id": message.link_id, "offset": message.offset, "destination_km": message.destination_km,
            "master_SAE_ID": message.master_sae, "slave_SAE_ID": message.slave_sae,
            "keys": [{"key_ID": k, "ciphertext": base64.b64encode(c).decode()}
                     for k, c in zip(message.key_ids, message.ciphertexts)]}
    return "POST", f"{API}/discard", {"link_id": message.link_id, "offset": message.offset, "bits": message.bits}


def _error(km_id: str, data: dict) -> KeyServiceError:
    """The peer's error, as the class it raised (a KeyServiceError when unknown)."""
    cls = ERRORS.get(data.get("error"), KeyServiceError) if isinstance(data.get("error"), str) else KeyServiceError
    message = data.get("message")
    details = data.get("details")
    if not isinstance(message, str):
        message = f"key manager {km_id} failed without saying why"
    return cls(message, details if isinstance(details, list) and all(isinstance(d, dict) for d in details) else [])


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a count, got {shown(value)}")
    return value


def _answer(message: PeerMessage, data: dict, km_id: str) -> object:
    if isinstance(message, (RelayMessage, DiscardMessage)):
        return None
    if isinstance(message, ReserveRequest):
        return _count(data["offset"])
    tail = _count(data["tail"])
    if isinstance(message, TailQuery):
        return tail
    if "error" in data:
        return PlanAnswer(tail, error=_error(km_id, data["error"]))
    room, most = data.get("room"), data.get("max_stored_keys")
    hops = tuple(Hop(str(h["from_km"]), str(h["to_km"]), str(h["link_id"]), _count(h["available_bits"]),
                     _count(h["max_bits"]), float(h["rate_bps"])) for h in data["hops"])
    return PlanAnswer(tail, Plan(hops, None if room is None else _count(room), None if most is None else _count(most)))
