"""The project's YANG modules and the libyang context that validates data against them."""
import pathlib
from collections.abc import Iterable

import libyang
from _libyang import ffi, lib  # the cffi layer of the libyang bindings

from netconf_core.yangdirs import SEARCH_DIRS

PROJECT_MODULES: list[str] = [
    "qi-types",
    "qi-alarms",
    "etsi-qkd-node-types",
    "etsi-qkd-sdn-node",
    "qi-qkd-node-ext",
    "qi-key-manager",
    "qi-optical-switch",
    "qi-fibre-plant",
    "qi-quantum-node",
    "qi-connectivity",
    "qi-forwarding",
    "qi-fabric",
    "qi-service",
    "qi-entanglement-service",
    "qi-intent",
    "qi-entanglement-intent",
    "qi-federation",
    "qi-federation-peering",
]
"""Every module in yang/, each after the project modules it imports."""

# Modules whose features are chosen, not all enabled: what the engine implements. ietf-netconf
# without :url; RFC 8639 dynamic subscriptions (no configured ones, no QoS, no interface or VRF
# designation, XML only); RFC 8641 with on-change.
FEATURES: dict[str, tuple[str, ...]] = {
    "ietf-netconf": ("writable-running", "candidate", "confirmed-commit", "rollback-on-error", "validate",
                     "startup", "xpath"),
    "ietf-subscribed-notifications": ("encode-xml", "replay", "subtree", "xpath"),
    "ietf-yang-push": ("on-change",),
}


def load_context(modules: Iterable[str] = PROJECT_MODULES,
                 extra_dirs: Iterable[pathlib.Path | str] = ()) -> libyang.Context:
    """A libyang context with `modules` implemented and all their features enabled (those
    of FEATURES: the features named there).

    Modules are found in `extra_dirs`, then the project's yang/ and pyang's IETF and IANA
    directories; libyang implements the modules they augment.  Identity
    values are only valid when the module defining the identity is
    implemented, so load every module whose identities data may use (the
    default, PROJECT_MODULES, covers all of ours).

    Also makes libyang record the data path of each validation error
    (process-wide), so that LibyangError messages end with
    'Data location "/path/of/the/node"' or 'Schema location ...'.
    """
    lib.ly_set_log_clb(ffi.NULL, True)
    lib.ly_log_options(lib.LY_LOSTORE)
    context = libyang.Context(":".join(str(path) for path in [*extra_dirs, *SEARCH_DIRS]))
    for name in modules:
        features = FEATURES.get(name)
        if features is None:
            context.load_module(name).feature_enable_all()
            continue
        names = [ffi.new("char[]", f.encode()) for f in features]
        array = ffi.new("char *[]", [*names, ffi.NULL])
        if lib.ly_ctx_load_module(context.cdata, name.encode(), ffi.NULL, array) == ffi.NULL:
            raise context.error(f"cannot load module {name}")
    return context
