"""The NETCONF engine: the one thing the levels (devices, controller, orchestrator, tools)
share. It imports none of them (lint-imports checks it; see pyproject.toml).

What a level builds on, importable from here:

- serving: `NetconfServer`, `User`, `standard_nacm`, `SubtreeWriters`, `Session` (the
  session an RPC handler is called with), `Schema`, `schema_for` (one shared Schema per set of
  modules), `empty_tree`; `AccessPolicy` and `NacmAccess` (the default one) for
  `NetconfServer.set_access_policy`; `RestconfServer` (RESTCONF on a NetconfServer);
- reconciling: `ReconcileLoop` (level-triggered, coalescing, periodic, backing off on failure);
- talking to a server: `NetconfClient`, `SessionClosedError`, `RPCTimeoutError`, and
  `DeviceLink`/`Endpoint` (a session kept up with reconnect), `transaction` (one change over
  several servers), `TransactionError`, `IncompatibleDevice`; host keys: `Endpoint.host_key`
  / `known_hosts` (a link refuses an endpoint pinning neither, `UnpinnedEndpoint`, and a server
  offering another key, `UntrustedHostKey`), `public_key_line` (what to pin; also
  `NetconfServer.public_host_key`), `trusted_host_keys`, `persistent_host_key`;
- errors: `RPCError`, `RPCErrorList`, `BASE_NS`.

The names are loaded on first use, so that importing one module of the engine (say
`netconf_core.framing`) does not import the SSH and libyang layers as well.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_MODULE_OF = {
    "NetconfServer": "server", "User": "server", "standard_nacm": "server", "SubtreeWriters": "server",
    "AccessPolicy": "extension", "NacmAccess": "extension", "ReconcileLoop": "reconcile",
    "Session": "session", "RestconfServer": "restconf",
    "Schema": "schema", "schema_for": "schema_cache",
    "empty_tree": "datastore", "write_atomically": "datastore",
    "NetconfClient": "client", "SessionClosedError": "client", "RPCTimeoutError": "client",
    "DeviceLink": "link", "Endpoint": "link", "transaction": "link", "TransactionError": "link",
    "IncompatibleDevice": "link", "Watch": "link", "UnpinnedEndpoint": "link", "UntrustedHostKey": "client",
    "public_key_line": "ssh", "trusted_host_keys": "ssh", "persistent_host_key": "ssh", "PushSubscription": "client",
    "RPCError": "errors", "RPCErrorList": "errors", "BASE_NS": "errors",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value   # later look-ups do not come here again
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and editors; at run time the names load lazily (above)
    from .client import NetconfClient, RPCTimeoutError, SessionClosedError
    from .datastore import empty_tree, write_atomically
    from .errors import BASE_NS, RPCError, RPCErrorList
    from .extension import AccessPolicy, NacmAccess
    from .client import PushSubscription
    from .client import UntrustedHostKey
    from .link import DeviceLink, Endpoint, IncompatibleDevice, TransactionError, UnpinnedEndpoint, Watch, transaction
    from .ssh import persistent_host_key, public_key_line, trusted_host_keys
    from .reconcile import ReconcileLoop
    from .schema import Schema
    from .schema_cache import schema_for
    from .restconf import RestconfServer
    from .server import NetconfServer, SubtreeWriters, User, standard_nacm
    from .session import Session
