"""What a person may do from the console, each as a NETCONF operation of the level it
concerns, in a session of the account of that person's role: the level's NACM decides, so a
read-only person is refused by the level itself (access-denied, HTTP 403), whatever the page
shows or the request says.

- faults of an emulated network, the RPCs `qstrata fault` uses: cut-span, repair-span,
  attach-eavesdropper and remove-eavesdropper at the fibre plant device; the restart RPC of
  a QKD node and the restart action of a key manager (an outage, then back from disk);
- intents at the orchestrator, from YAML or JSON text (the form of `qstrata intent apply`):
  a dry run (candidate edited, the dry-run RPC asked, the candidate discarded) or a commit;
  deleting one.
A failure leaves the levels as they were: the candidate is always discarded and unlocked."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncssh
import yaml

from console.levels import LevelAccess
from models.connectivity import plant_operation
from models.intent import IntentInputError, intents_from_data
from models.ns import INTENT, KEY_MANAGER, NODE_EXT
from netconf_core import RPCError
from netconf_core.ns import BASE, YANG_XML
from netconf_core.restconf import STATUS_OF_TAG

PLANT_RPCS = {"cut-span": ("cut-span", "cut"), "repair-span": ("repair-span", "repaired"),
              "eavesdrop": ("attach-eavesdropper", "tapped"),
              "clear-eavesdropper": ("remove-eavesdropper", "no longer tapped")}
DEVICE_ACTIONS = ("crash", "restart")
MAX_OUTAGE_S = 3600
MAX_TEXT = 65536
DRY_RUN_TIMEOUT_S = 60


@dataclass
class ActionError(Exception):
    """An action refused: by the console (bad input) or by a level (its rpc-error)."""

    status: int
    message: str
    tag: str = "invalid-value"

    def __str__(self) -> str:
        return self.message


class Actions:
    def __init__(self, levels: list[LevelAccess]):
        self.levels = {level.name: level for level in levels}

    def _of_kind(self, kind: str) -> LevelAccess:
        level = next((l for l in self.levels.values() if l.kind == kind), None)
        if level is None:
            raise ActionError(404, f"this network has no {kind} (not an emulated network?)", "invalid-value")
        return level

    async def _session(self, level: LevelAccess, role: str):
        if role not in level.accounts:
            raise ActionError(403, f"the console has no {role} account of {level.name}", "access-denied")
        try:
            return await level.endpoint(role).connect(timeout=10)
        except (OSError, asyncio.TimeoutError, asyncssh.Error) as error:
            raise ActionError(502, f"cannot reach {level.name} at {level.host}:{level.port}: "
                                   f"{error or type(error).__name__}", "operation-failed") from None

    async def _run(self, level: LevelAccess, role: str, work):
        nc = await self._session(level, role)
        try:
            async with nc:
                return await work(nc)
        except RPCError as error:
            raise ActionError(STATUS_OF_TAG.get(error.tag, 500), f"{level.name} refused: {error}", error.tag) from None

    # --- faults ------------------------------------------------------------------------------

    async def fault(self, role: str, body: dict) -> str:
        action = body.get("action")
        if action in PLANT_RPCS:
            span = _text(body, "span")
            leaves = {}
            if action == "eavesdrop":
                leaves["fraction"] = f"{_fraction(body.get('fraction')):.9f}"
            rpc, done = PLANT_RPCS[action]
            await self._run(self._of_kind("fibre-plant"), role, lambda nc: nc.dispatch(plant_operation(rpc, span, **leaves)))
            return f"span {span} {done}"
        if action in DEVICE_ACTIONS:
            name = _text(body, "device")
            level = self.levels.get(name)
            if level is None or level.kind not in ("qkd-node", "key-manager"):
                raise ActionError(404, f"no QKD node or key manager {name!r} in this network")
            outage = 0 if action == "restart" else _outage(body.get("outage", 30))
            await self._run(level, role, lambda nc: nc.dispatch(_restart(level.kind, outage)))
            return f"{level.kind} {name} " + ("restarting" if outage == 0 else f"down for {outage} s, then back")
        raise ActionError(400, f"unknown fault {action!r}: expected one of "
                               f"{', '.join([*PLANT_RPCS, *DEVICE_ACTIONS])}")

    # --- intents -----------------------------------------------------------------------------

    async def apply_intents(self, role: str, text: object, dry_run: bool) -> dict:
        intents = parse_intents(text)
        config = INTENT.element("intents")
        config.extend(intents)
        names = [INTENT.text(i, "name", "") for i in intents]

        async def work(nc) -> dict:
            await nc.lock("candidate")
            try:
                await nc.edit_config(config, target="candidate")
                if dry_run:
                    reply = await nc.dispatch(INTENT.element("dry-run"), timeout=DRY_RUN_TIMEOUT_S)
                    return {"dry_run": True, "intents": dry_run_view(reply)}
                await nc.commit()
                return {"dry_run": False, "committed": names}
            finally:
                await asyncio.gather(nc.discard_changes(), return_exceptions=True)
                await asyncio.gather(nc.unlock("candidate"), return_exceptions=True)

        return await self._run(self._of_kind("orchestrator"), role, work)

    async def delete_intent(self, role: str, name: str) -> str:
        if not name or len(name) > 256:
            raise ActionError(400, "give the name of the intent to delete")
        edit = INTENT.element("intents")
        entry = INTENT.sub(edit, "intent")
        entry.set(BASE("operation"), "delete")
        INTENT.sub(entry, "name", name)

        async def work(nc) -> None:
            await nc.edit_config(edit, target="candidate")
            try:
                await nc.commit()
            finally:
                await asyncio.gather(nc.discard_changes(), return_exceptions=True)

        await self._run(self._of_kind("orchestrator"), role, work)
        return f"intent {name} deleted; the orchestrator tears it down"


def parse_intents(text: object):
    """The <intent> elements of YAML or JSON text, or ActionError(400) saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ActionError(400, "give the intents as YAML or JSON text")
    if len(text) > MAX_TEXT:
        raise ActionError(413, f"the intents' text is over {MAX_TEXT} characters")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ActionError(400, f"not valid YAML: {error}") from None
    try:
        return intents_from_data(data, "the intents")
    except IntentInputError as error:
        raise ActionError(400, str(error)) from None


def dry_run_view(reply) -> list[dict]:
    text = lambda element, tag: INTENT.text(element, tag, "")
    return [{"name": text(i, "name"), "change": text(i, "change"), "feasible": text(i, "feasible") == "true",
             "reason": text(i, "reason"),
             "requests": [{"stratum": text(r, "stratum").split(":")[-1], "operation": text(r, "operation"),
                           "resource": text(r, "resource"), "name": text(r, "name"), "detail": text(r, "detail")}
                          for r in INTENT.all(i, "request")]}
            for i in INTENT.all(reply, "intent")]


def _restart(kind: str, outage: int):
    if kind == "qkd-node":   # a QKD node's restart is an RPC of its device
        return NODE_EXT.element("restart", leaves={"outage": outage})
    action = YANG_XML.element("action")
    restart = KEY_MANAGER.sub(KEY_MANAGER.sub(action, "key-manager"), "restart")
    KEY_MANAGER.sub(restart, "outage", outage)
    return action


def _text(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ActionError(400, f"give {key} (a name)")
    return value


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ActionError(400, f"the eavesdropper's fraction must be a number within (0, 1], got {value!r}")
    return float(value)


def _outage(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_OUTAGE_S:
        raise ActionError(400, f"the outage must be whole seconds within 0..{MAX_OUTAGE_S}, got {value!r}")
    return value
