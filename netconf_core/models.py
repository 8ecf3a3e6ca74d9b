"""The project's YANG modules and the libyang context that validates data against them."""
from collections.abc import Iterable

import libyang

from netconf_core.yangdirs import SEARCH_DIRS

PROJECT_MODULES: list[str] = [
    "qi-types",
    "etsi-qkd-node-types",
    "etsi-qkd-sdn-node",
    "qi-qkd-node-ext",
    "qi-key-manager",
    "qi-optical-switch",
    "qi-connectivity",
    "qi-forwarding",
    "qi-service",
    "qi-intent",
    "qi-federation",
]
"""Every module in yang/, each after the project modules it imports."""


def load_context(modules: Iterable[str] = PROJECT_MODULES) -> libyang.Context:
    """A libyang context with `modules` implemented and all their features enabled.

    Modules are found in the project's yang/ and pyang's IETF and IANA
    directories; the modules they import come along, and the ones they
    augment are implemented by libyang as needed.
    """
    context = libyang.Context(":".join(str(path) for path in SEARCH_DIRS))
    for name in modules:
        context.load_module(name).feature_enable_all()
    return context
