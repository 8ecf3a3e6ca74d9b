"""What the three stratum controllers share: a NETCONF server of the stratum's northbound
model (built on the engine, like a device) and a `DeviceLink` per southbound device, with
a periodic full resync that catches what notifications missed.

A controller that declares `watches` (class attribute, or the constructor's argument) keeps
those on-change YANG-Push subscriptions on every device that offers ietf-yang-push and hears
of their changes in `device_update`; `polled(link)` says whether it must still read that
device's watched state itself (the device offers no YANG-Push, or nothing is watched).

A controller's state changes only when something it hears of or does changes it: the base
signals `server.state_changed()` after every hook it runs (a device connected, lost, told or
pushed something; a resync; a commit's `apply`), and a controller's own links and loops are
made with `link` and `loop`, which signal the same way. So on-change subscriptions to its
operational state look at it only then (NetconfServer.signals_state) instead of polling;
state read live from devices when asked (delivered-key and pair counters) is seen as it is
at those moments."""
from __future__ import annotations

import asyncio
import logging
import pathlib
from typing import Awaitable, Callable, ClassVar

import asyncssh
from lxml import etree

from netconf_core import (DeviceLink, Endpoint, NetconfServer, ReconcileLoop, RPCError, User, Watch, schema_for,
                          standard_nacm, transaction)
from models.network import networks_of

log = logging.getLogger(__name__)

def signature(element: etree._Element) -> str:
    """An order-insensitive text form of a subtree: equal for two trees with the same content."""
    children = sorted(signature(c) for c in element if isinstance(c.tag, str))
    return f"<{element.tag}>{(element.text or '').strip()}{''.join(children)}</>"


def same_content(a: etree._Element | None, b: etree._Element | None) -> bool:
    """Whether two subtrees have the same content, in any order (their signatures are equal);
    found at once when they serialise the same, as two versions of a datastore do unless
    something in them was reordered."""
    if a is None or b is None:
        return a is b
    return etree.tostring(a) == etree.tostring(b) or signature(a) == signature(b)


class Controller:
    kind: ClassVar[str] = "controller"
    modules: ClassVar[tuple[str, ...]] = ()          # served northbound
    device_modules: ClassVar[tuple[str, ...]] = ()   # required of every southbound device
    read_only_rpcs: ClassVar[tuple[tuple[str, str], ...]] = ()  # (module, rpc) a read-only user may run
    # The top-level nodes `state` serves ("/module:node"): it runs only for a <get> that can
    # select one of them. None: for every <get>.
    state_paths: ClassVar[tuple[str, ...] | None] = None
    # Whether `state` takes the <get>'s filter (NetconfServer.add_state_provider's with_filter).
    state_takes_filter: ClassVar[bool] = False
    # On-change subscriptions kept on every southbound device that offers YANG-Push.
    watches: tuple[Watch, ...] = ()

    def __init__(self, name: str, devices: list[Endpoint], users: dict[str, User], *,
                 read_write: tuple[str, ...] = ("admin",), read_only: tuple[str, ...] = ("monitor",),
                 host: str = "127.0.0.1", port: int = 0, state_dir: pathlib.Path | None = None,
                 resync_period: float = 10.0, host_key: asyncssh.SSHKey | None = None,
                 watches: tuple[Watch, ...] | None = None):
        self.name = name
        if watches is not None:
            self.watches = watches
        self.server = NetconfServer(schema_for(self.modules), users, host=host, port=port, host_key=host_key,
                                    datastore_dir=state_dir / "datastores" if state_dir else None,
                                    nacm=standard_nacm(list(read_write), list(read_only), self.read_only_rpcs), name=name)
        self.server.signals_state = True
        self.server.on_change(self.signalling(self.apply))
        self.server.add_state_provider(self.state, list(self.state_paths) if self.state_paths else None,
                                       with_filter=self.state_takes_filter)
        self.links = {ep.name: self.make_link(ep) for ep in devices}
        self.resync_period = resync_period
        # Periodic only; a failed resync is logged and the next period tries again.
        self._resync = self.loop(f"{name} resync", self.resync, period=resync_period, backoff_initial=None,
                                 logger=log)

    def make_link(self, endpoint: Endpoint) -> DeviceLink:
        return self.link(endpoint, self.device_modules, self.device_connected, self.device_notification,
                         self.watches, self.device_update if self.watches else None)

    def signalling(self, hook: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        """`hook`, after which (even when it fails) on-change subscriptions to the state look again."""
        async def signalled(*args):
            try:
                return await hook(*args)
            finally:
                self.server.state_changed()
        return signalled

    def link(self, endpoint: Endpoint, modules: tuple[str, ...], on_connect: Callable[..., Awaitable],
             on_notification: Callable[..., Awaitable], watches: tuple[Watch, ...] = (),
             on_update: Callable[..., Awaitable] | None = None) -> DeviceLink:
        """A DeviceLink whose hooks, and the loss of whose session, signal a state change."""
        return DeviceLink(endpoint, modules, self.signalling(on_connect), self.signalling(on_notification), watches,
                          self.signalling(on_update) if on_update else None,
                          on_disconnect=lambda link: self.server.state_changed())

    def loop(self, name: str, work: Callable[[], Awaitable], **options) -> ReconcileLoop:
        """A ReconcileLoop whose passes signal a state change."""
        return ReconcileLoop(name, self.signalling(work), **options)

    def polled(self, link: DeviceLink) -> bool:
        """Whether the watched state of this device is to be read by polling: it offers no
        YANG-Push (or this controller watches nothing), so no subscription tells its changes."""
        return not (self.watches and link.pushing)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()
        for link in self.links.values():
            link.start()
        self._resync.start()

    async def stop(self) -> None:
        await self._resync.stop()
        await asyncio.gather(*(link.stop() for link in self.links.values()))
        await self.server.stop()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until every southbound device is connected (or raise asyncio.TimeoutError)."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(l.connected.wait() for l in self.links.values()))

    async def publish_networks(self, build: Callable[[etree._Element], etree._Element]) -> None:
        """Write what the controller discovered into its own running configuration: `build`
        gets a copy of running and returns the ietf-network <networks> element to put in place
        of the old one (keeping what clients configured in it)."""
        def change(tree: etree._Element) -> etree._Element:
            new = build(tree)
            old = networks_of(tree)
            if old is not None:
                tree.replace(old, new)
            else:
                tree.append(new)
            return tree
        try:
            await self.server.update_running(change)
        except RPCError as err:
            log.warning("%s: the discovered topology does not fit the configured requests: %s", self.name, err)

    async def transaction(self, edits: dict[str, etree._Element], confirm_timeout: int = 30) -> None:
        """One change over several devices, by device name (see netconf_core.link.transaction)."""
        await transaction({self.links[name]: config for name, config in edits.items()}, confirm_timeout)

    # --- hooks for the stratum controllers ---------------------------------------------

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        """A new northbound running configuration: realise it southbound or raise RPCError."""

    async def state(self) -> etree._Element | None:
        """Northbound operational state."""
        return None

    async def device_connected(self, link: DeviceLink) -> None:
        """A device (re)connected: read its state."""

    async def device_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        """A device told us something."""

    async def device_update(self, link: DeviceLink, watch: Watch, content: etree._Element) -> None:
        """A <push-update> or <push-change-update> of one of `watches` from a device."""

    async def resync(self) -> None:
        """Periodic full read of every device; report and repair drift."""
