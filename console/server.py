"""The console's web server (aiohttp), on loopback: the built page, a login, the picture of
the network, its live stream and the actions.

    GET  /                      the page (console/web/dist, built by `make setup`)
    POST /api/login             {"user", "password"} -> a session cookie (HttpOnly, SameSite=Strict)
    POST /api/logout
    GET  /api/me                who is logged in, their role, whether the network is emulated
    GET  /api/state             every level's view, their reachability, the event log
    GET  /api/stream            the same, then each change, as Server-Sent Events
    GET  /api/layout            where the sites are drawn (kept on the server, per network)
    POST /api/layout            {"positions": {id: {x, y}}, "replace": bool}: a read-write user moves sites
    POST /api/faults            {"action": "cut-span", "span": ...} and the other faults
    POST /api/intents/preview   {"text": YAML or JSON}: the orchestrator's dry run
    POST /api/intents/apply     {"text": ...}: commit the intents
    DELETE /api/intents/{name}

Every /api/ resource but login wants the session cookie or HTTP Basic credentials of a
console user (401 otherwise). A write also wants `Content-Type: application/json` (a form of
another site cannot send that without the browser asking first) and, when the browser names
an Origin, this server's. Refusals are JSON: {"error": message, "tag": error-tag}."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import pathlib
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from console.actions import ActionError, Actions
from console.hub import DROPPED, Hub, watches_for
from console.layouts import LayoutError, LayoutStore
from console.levels import READ_WRITE, ConsoleUser, LevelAccess, authenticate

log = logging.getLogger(__name__)

WEB_DIST = pathlib.Path(__file__).parent / "web" / "dist"
COOKIE = "qstrata-console"
SESSION_TTL_S = 12 * 3600
HEARTBEAT_S = 15.0
MAX_BODY = 256 * 1024
STATIC = {"console.js": "application/javascript", "console.css": "text/css", "console.js.map": "application/json"}


@dataclass
class LoginSession:
    user: ConsoleUser
    expires: float


class ConsoleServer:
    """The console over `levels`, for `users`; `start()` binds host:port (0: a free port).
    `follow`: how views are kept (console.hub: "push" or "reread"); `state_dir`: where the
    layout is kept (None: in memory, for the console's lifetime)."""

    def __init__(self, levels: list[LevelAccess], users: dict[str, ConsoleUser], host: str = "127.0.0.1",
                 port: int = 0, *, title: str = "qstrata", dist: pathlib.Path = WEB_DIST, follow: str = "push",
                 state_dir: pathlib.Path | None = None):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"the console serves plain HTTP on loopback only, not on {host}")
        self.levels, self.users, self.host, self.port, self.title = levels, users, host, port, title
        self.dist = dist
        self.hub = Hub()
        self.actions = Actions(levels)
        self.emulated = any(level.kind == "fibre-plant" for level in levels)
        self._watches = watches_for(self.hub, levels, follow)
        self.layout = LayoutStore(title, state_dir)
        self._sessions: dict[str, LoginSession] = {}
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        app.add_routes([
            web.get("/", self._index), web.get("/{name:console\\.(js|css|js\\.map)}", self._static),
            web.post("/api/login", self._login), web.post("/api/logout", self._logout), web.get("/api/me", self._me),
            web.get("/api/state", self._state), web.get("/api/stream", self._stream),
            web.get("/api/layout", self._get_layout), web.post("/api/layout", self._set_layout),
            web.post("/api/faults", self._fault), web.post("/api/intents/preview", self._preview),
            web.post("/api/intents/apply", self._apply), web.delete("/api/intents/{name}", self._delete),
        ])
        return app

    async def start(self) -> None:
        for watch in self._watches:
            watch.start()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the port bound when 0 was asked

    async def stop(self) -> None:
        for task in list(self._streams):
            task.cancel()
        await asyncio.gather(*(watch.stop() for watch in self._watches), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ConsoleServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def synced(self, timeout: float = 30.0) -> None:
        """Wait until every level has been read once (a test's or benchmark's start)."""
        keys = {watch.key for watch in self._watches}
        async with asyncio.timeout(timeout):
            while not keys <= set(self.hub.views):
                await asyncio.sleep(0.05)

    # --- who is asking -----------------------------------------------------------------------

    def _user(self, request: web.Request) -> ConsoleUser:
        token = request.cookies.get(COOKIE)
        session = self._sessions.get(token) if token else None
        if session is not None and session.expires > time.time():
            return session.user
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                name = password = ""
            user = authenticate(self.users, name, password)
            if user is not None:
                return user
        raise _refusal(401, "log in first", "access-denied")

    async def _body(self, request: web.Request) -> dict:
        if request.content_type != "application/json":
            raise _refusal(415, "send the request as application/json")
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") != f"http://{request.host}":
            raise _refusal(403, f"a request from {origin} is not this console's", "access-denied")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _refusal(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _refusal(400, "the body must be a JSON object")
        return body

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except ActionError as error:
            return web.json_response({"error": error.message, "tag": error.tag}, status=error.status)

    # --- resources ---------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        page = self.dist / "index.html"
        if not page.exists():
            return web.Response(status=503, text="the console's page is not built: run `make setup` "
                                                 "(npm ci and the build in console/web)")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache", "Content-Security-Policy":
                                               "default-src 'self'; style-src 'self' 'unsafe-inline'"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.dist / name
        if name not in STATIC or not path.exists():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": STATIC[name], "Cache-Control": "no-cache"})

    async def _login(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        user = authenticate(self.users, str(body.get("user", "")), str(body.get("password", "")))
        if user is None:
            await asyncio.sleep(0.5)   # a guesser waits
            raise _refusal(401, "wrong user name or password", "access-denied")
        now = time.time()
        self._sessions = {t: s for t, s in self._sessions.items() if s.expires > now}
        token = secrets.token_urlsafe(32)
        self._sessions[token] = LoginSession(user, now + SESSION_TTL_S)
        response = web.json_response(self._whoami(user))
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", max_age=SESSION_TTL_S, path="/")
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    def _whoami(self, user: ConsoleUser) -> dict:
        return {"user": user.name, "role": user.role, "emulated": self.emulated, "title": self.title,
                "devices": sorted((l.name, l.kind) for l in self.levels if l.kind in ("qkd-node", "key-manager"))}

    async def _me(self, request: web.Request) -> web.Response:
        return web.json_response(self._whoami(self._user(request)))

    async def _state(self, request: web.Request) -> web.Response:
        self._user(request)
        return web.json_response(self.hub.snapshot())

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self._user(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue = self.hub.subscribe()
        task = asyncio.current_task()
        self._streams.add(task)
        try:
            await response.write(_sse("snapshot", json.dumps(self.hub.snapshot(), separators=(",", ":"))))
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT_S):
                        kind, message = await queue.get()
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                if (kind, message) == DROPPED:
                    break
                await response.write(_sse(kind, message))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(queue)
            self._streams.discard(task)
        return response

    async def _get_layout(self, request: web.Request) -> web.Response:
        self._user(request)
        return web.json_response({"network": self.layout.network, "positions": self.layout.positions})

    async def _set_layout(self, request: web.Request) -> web.Response:
        user = self._user(request)
        body = await self._body(request)
        if user.role != READ_WRITE:
            raise _refusal(403, "a read-only user cannot move the shared layout (the page keeps it in this "
                                "browser only)", "access-denied")
        replace = body.get("replace", False)
        if not isinstance(replace, bool):
            raise _refusal(400, "replace must be true or false")
        try:
            taken = self.layout.update(body.get("positions"), replace)
        except LayoutError as error:
            raise _refusal(400, str(error)) from None
        except OSError as error:
            raise _refusal(500, f"cannot keep the layout: {error.strerror}", "operation-failed") from None
        self.hub.publish("layout", {"positions": taken, "replace": replace, "by": user.name})
        return web.json_response({"ok": True, "kept": len(taken)})

    async def _fault(self, request: web.Request) -> web.Response:
        user = self._user(request)
        body = await self._body(request)
        message = await self.actions.fault(user.role, body)
        log.info("console: %s: %s", user.name, message)
        return web.json_response({"ok": True, "message": message})

    async def _preview(self, request: web.Request) -> web.Response:
        user = self._user(request)
        body = await self._body(request)
        return web.json_response(await self.actions.apply_intents(user.role, body.get("text"), dry_run=True))

    async def _apply(self, request: web.Request) -> web.Response:
        user = self._user(request)
        body = await self._body(request)
        result = await self.actions.apply_intents(user.role, body.get("text"), dry_run=False)
        log.info("console: %s committed intents %s", user.name, ", ".join(result["committed"]))
        return web.json_response(result)

    async def _delete(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if request.headers.get("Origin") not in (None, f"http://{request.host}"):
            raise _refusal(403, "a request from another site is not this console's", "access-denied")
        message = await self.actions.delete_intent(user.role, request.match_info["name"])
        return web.json_response({"ok": True, "message": message})


def _refusal(status: int, message: str, tag: str = "invalid-value") -> ActionError:
    return ActionError(status, message, tag)


def _sse(kind: str, data: str) -> bytes:
    return f"event: {kind}\ndata: {data}\n\n".encode()
