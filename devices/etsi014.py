"""ETSI GS QKD 014 V1.1.1 key delivery API of one key manager, on aiohttp.

    GET       /api/v1/keys/{slave_SAE_ID}/status
    GET, POST /api/v1/keys/{slave_SAE_ID}/enc_keys    (query number, size; or a Key request body)
    GET, POST /api/v1/keys/{master_SAE_ID}/dec_keys   (query key_ID; or a Key IDs body)

Errors are {"message": str, "details": [object]} with 400 (bad request), 401 (unknown SAE, or
no key session between the two SAEs), 413 (a request body over `max_body_bytes`, 64 KiB by
default: a Key IDs body of `max_key_per_request` IDs is a few KiB) or 503 (not enough key in a
pool or a token bucket, too many keys of the SAE pair waiting at the slave's key manager, or
no way to the peer key manager). A body that is not JSON, or nested too deeply to parse, is a
400; so is a dec_keys request of more than `max_key_per_request` key_IDs.

dec_keys deletes the keys it answers with before the answer is sent: a crash, or a reply lost
on its way, loses those keys; they are never served twice (see devices.keystore).

The key manager's KM-to-KM routes (devices/km_peer.py, docs/km-protocol.md) are served on
the same listener and TLS context (`extra_routes`).

Who is calling: the standard takes the calling SAE_ID from the client certificate of a
mutually authenticated TLS connection, and so does this server, given an SSL context that
requires client certificates (`server_ssl_context`): the SAE_ID is the certificate's subject
common name, and a client without a certificate of the CA cannot connect. Only when asked
with `insecure_sae_header=True` does it serve plain HTTP (on loopback), where the caller names
itself in the `X-SAE-ID` request header: anyone can then pose as any SAE. That mode is an
extension of this emulator for tests, not part of ETSI 014; a server given neither refuses to
be built.
"""
from __future__ import annotations

import base64
import json
import re
import ssl
import uuid
from typing import Awaitable, Callable, Iterable

from aiohttp import web

from devices.keystore import BadKeyRequest, Key, KeyManager, KeyServiceError, UnknownSAE, shown

SAE_HEADER = "X-SAE-ID"
LOOPBACK = "127.0.0.1"
MAX_BODY_BYTES = 64 * 1024
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_KEY_REQUEST_FIELDS = {"number", "size", "additional_slave_SAE_IDs", "extension_mandatory", "extension_optional"}
_KEY_IDS_FIELDS = {"key_IDs", "key_IDs_extension"}


def server_ssl_context(certfile: str, keyfile: str, cafile: str) -> ssl.SSLContext:
    """TLS >= 1.2 that requires a client certificate signed by the CA in `cafile`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(certfile, keyfile)
    return context


class BodyTooLarge(KeyServiceError):
    http_status = 413


class Etsi014Server:
    """The API of `km`, listening on `host` (127.0.0.1 unless given; a free port unless one is
    given); request bodies over `max_body_bytes` are refused with 413. Plain HTTP (the insecure
    header mode) listens on loopback only."""

    def __init__(self, km: KeyManager, port: int = 0, ssl_context: ssl.SSLContext | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, *, insecure_sae_header: bool = False,
                 extra_routes: Iterable[web.RouteDef] = (), host: str = LOOPBACK) -> None:
        if ssl_context is None and not insecure_sae_header:
            raise ValueError(f"key manager {km.id}: ETSI 014 needs a TLS context requiring client certificates "
                             f"(the SAE is its certificate's name); plain HTTP with the {SAE_HEADER} header only "
                             "with insecure_sae_header=True")
        if ssl_context is None and host != LOOPBACK:
            raise ValueError(f"key manager {km.id}: plain HTTP with the {SAE_HEADER} header is for loopback only, "
                             f"not {host}")
        if ssl_context is not None and ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError(f"key manager {km.id}: the TLS context must require client certificates "
                             "(verify_mode CERT_REQUIRED): the SAE is named by its certificate")
        self.km = km
        self.ssl_context = ssl_context
        self.max_body_bytes = max_body_bytes
        self._port = port
        self.host = host
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=max_body_bytes)
        self.app.add_routes([
            web.get("/api/v1/keys/{sae}/status", self._status),
            web.get("/api/v1/keys/{sae}/enc_keys", self._enc_keys),
            web.post("/api/v1/keys/{sae}/enc_keys", self._enc_keys),
            web.get("/api/v1/keys/{sae}/dec_keys", self._dec_keys),
            web.post("/api/v1/keys/{sae}/dec_keys", self._dec_keys),
            *extra_routes,
        ])

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, ssl_context=self.ssl_context)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Etsi014Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self._port}"

    # -- handlers ------------------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._answer_status)

    async def _enc_keys(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._answer_enc_keys)

    async def _dec_keys(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._answer_dec_keys)

    async def _serve(self, request: web.Request,
                     answer: Callable[[web.Request, str, str], Awaitable[dict]]) -> web.Response:
        """Run `answer(request, calling SAE, SAE named in the path)`; errors become ETSI 014 errors."""
        try:
            body = await answer(request, self._caller(request), request.match_info["sae"])
        except KeyServiceError as error:
            return web.json_response({"message": error.message, "details": error.details},
                                     status=error.http_status)
        return web.json_response(body)

    def _caller(self, request: web.Request) -> str:
        if self.ssl_context is not None:
            name = certificate_name(request)
            if name:
                return name
            raise UnknownSAE("the client certificate names no SAE (no subject common name)")
        caller = request.headers.get(SAE_HEADER, "")
        if not caller:
            raise UnknownSAE(f"no SAE identity: send the {SAE_HEADER} header (or use TLS client certificates)")
        return caller

    async def _answer_status(self, request: web.Request, master: str, slave: str) -> dict:
        s = await self.km.status(master, slave)
        return {"source_KME_ID": s.source_km, "target_KME_ID": s.target_km,
                "master_SAE_ID": s.master_sae, "slave_SAE_ID": s.slave_sae,
                "key_size": s.key_size, "stored_key_count": s.stored_key_count,
                "max_key_count": s.max_key_count, "max_key_per_request": s.max_key_per_request,
                "max_key_size": s.max_key_size, "min_key_size": s.min_key_size,
                "max_SAE_ID_count": s.max_sae_id_count}

    async def _answer_enc_keys(self, request: web.Request, master: str, slave: str) -> dict:
        if request.method == "POST":
            body = await json_object(request, self.max_body_bytes, _KEY_REQUEST_FIELDS, _ETSI_OBJECTS)
            number, size = body.get("number", 1), body.get("size")
            for name in ("additional_slave_SAE_IDs", "extension_mandatory"):
                if body.get(name):
                    raise BadKeyRequest(f"{name} is not supported by this key manager")
        else:
            number = _query_int(request, "number", 1)
            size = _query_int(request, "size", None)
        return _key_container(await self.km.enc_keys(master, slave, number, size))

    async def _answer_dec_keys(self, request: web.Request, slave: str, master: str) -> dict:
        if request.method == "POST":
            body = await json_object(request, self.max_body_bytes, _KEY_IDS_FIELDS, _ETSI_OBJECTS)
            entries = body.get("key_IDs")
            if not isinstance(entries, list):
                raise BadKeyRequest("key_IDs must be a list of objects with a key_ID")
            _check_count(len(entries), self.km.limits.max_key_per_request)
            if not all(isinstance(e, dict) for e in entries):
                raise BadKeyRequest("key_IDs must be a list of objects with a key_ID")
            key_ids = [e.get("key_ID") for e in entries]
        else:
            key_ids = request.query.getall("key_ID", [])
            _check_count(len(key_ids), self.km.limits.max_key_per_request)
        for key_id in key_ids:
            if not isinstance(key_id, str) or not _is_uuid(key_id):
                raise BadKeyRequest(f"key_ID must be a UUID, got {shown(key_id)}")
        return _key_container(self.km.dec_keys(slave, master, key_ids))


def certificate_name(request: web.Request) -> str | None:
    """The subject common name of the client certificate of a TLS request (None without one)."""
    certificate = request.transport.get_extra_info("peercert") if request.transport else None
    for rdn in (certificate or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


def _key_container(keys: list[Key]) -> dict:
    return {"keys": [{"key_ID": k.key_id, "key": base64.b64encode(k.key).decode()} for k in keys]}


def _check_count(count: int, most: int) -> None:
    if count > most:
        raise BadKeyRequest(f"at most {most} key_IDs per request, got {count}",
                            [{"max_key_per_request": most, "key_IDs": count}])


_ETSI_OBJECTS = "a Key request or Key IDs object"


async def json_object(request: web.Request, max_bytes: int, allowed: set[str] | None = None,
                      what: str = "a request") -> dict:
    """The request's body, a JSON object of at most `max_bytes` (and, given `allowed`, only those
    fields), or the KeyServiceError to answer with (400, 413)."""
    too_large = BodyTooLarge(f"request body too large: at most {max_bytes} bytes", [{"max_body_bytes": max_bytes}])
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    try:
        body = json.loads(raw)  # bytes: UTF-8, -16 or -32, whatever the Content-Type says
    except RecursionError:
        raise BadKeyRequest(f"request body is nested too deeply to be {what}") from None
    except ValueError as exc:
        raise BadKeyRequest(f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadKeyRequest("request body must be a JSON object")
    unknown = sorted(set(body) - allowed) if allowed is not None else []
    if unknown:
        raise BadKeyRequest(f"unknown field(s) {', '.join(u[:64] for u in unknown[:5])}"
                            f"{' and more' if len(unknown) > 5 else ''}; expected {', '.join(sorted(allowed))}")
    return body


def _query_int(request: web.Request, name: str, default: int | None) -> int | None:
    text = request.query.get(name)
    if text is None:
        return default
    if not _INTEGER.fullmatch(text):
        raise BadKeyRequest(f"{name} must be an integer, got {text[:64]!r}")
    return int(text)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
