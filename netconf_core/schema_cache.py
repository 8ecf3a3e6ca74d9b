"""One `Schema` (libyang context) per set of modules, shared by every server that serves that
set: devices, controllers and orchestrators of one process build each context once."""
from __future__ import annotations

import functools

from .schema import Schema

# Identity values are only valid when the module defining the identity is implemented, so
# every shared schema implements the project's identity modules.
IDENTITY_MODULES = ("qi-types", "etsi-qkd-node-types")


@functools.lru_cache(maxsize=None)
def schema_for(modules: tuple[str, ...]) -> Schema:
    """The shared schema of `modules` (plus IDENTITY_MODULES)."""
    return Schema(list(dict.fromkeys(IDENTITY_MODULES + modules)))
