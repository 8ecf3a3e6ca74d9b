"""The lifecycle of an intent (qi-intent lifecycle-state) and the transitions it allows.

    planned -> compiling -> installing -> active -> degraded -> (repairing -> active) | failed
    any state but removed -> removing -> removed

A failed intent is compiled again when the network changes (the reconcile loop is
level-triggered); a removed intent that is enabled again starts over from planned; an
active intent whose configuration changed, or that is told to re-plan, goes repairing. A
protected intent (several disjoint paths) that lost some of its paths but not all is degraded
while its keys flow on the others, and active again when its paths are back.
"""
from __future__ import annotations

STATES = ("planned", "compiling", "installing", "active", "degraded", "repairing", "failed",
          "removing", "removed")

ALLOWED: dict[str, frozenset[str]] = {
    "planned": frozenset({"compiling", "removing"}),
    "compiling": frozenset({"installing", "failed", "removing"}),
    "installing": frozenset({"active", "degraded", "failed", "removing"}),
    "active": frozenset({"degraded", "repairing", "removing"}),
    "degraded": frozenset({"repairing", "active", "failed", "removing"}),
    "repairing": frozenset({"installing", "active", "degraded", "failed", "removing"}),
    "failed": frozenset({"compiling", "removing"}),
    "removing": frozenset({"removed"}),
    "removed": frozenset({"planned"}),
}

REALISED = frozenset({"active", "degraded"})
"""States in which the intent's keys flow (perhaps short of its requirements)."""


class IllegalTransition(ValueError):
    pass


def check(from_state: str, to_state: str) -> None:
    if to_state not in ALLOWED.get(from_state, frozenset()):
        raise IllegalTransition(f"an intent cannot go from {from_state} to {to_state}")
