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
    "qi-connectivity",
    "qi-forwarding",
    "qi-service",
    "qi-intent",
    "qi-federation",
]
"""Every module in yang/, each after the project modules it imports."""


def load_context(modules: Iterable[str] = PROJECT_MODULES,
                 extra_dirs: Iterable[pathlib.Path | str] = ()) -> libyang.Context:
    """A libyang context with `modules` implemented and all their features enabled.

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
        context.load_module(name).feature_enable_all()
    return context
