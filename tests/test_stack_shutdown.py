"""Stopping a busy stack is quiet: requests in flight at the orchestrator, whose handlers are
waiting on the controllers below while those sessions close, end in an rpc-error or a closed
session for the client, and the log shows no traceback and no "internal error"."""
from __future__ import annotations

import asyncio
import logging

from devices.topology import default_topology
from netconf_core.client import NetconfClient, SessionClosedError
from netconf_core.errors import RPCError
from tools.stack import Stack

INT_NS = "urn:qstrata:yang:qi-intent"
CANDIDATE_INTENT = (f"<intents xmlns='{INT_NS}'><intent><name>busy</name><endpoints><source-sae>sae-quintin"
                    "</source-sae><destination-sae>sae-montegancedo</destination-sae></endpoints>"
                    "<min-rate>5000</min-rate></intent></intents>")
CLIENTS = 8
BUSY_S = 1.0


def test_stopping_a_busy_stack_logs_no_internal_error(caplog):
    caplog.set_level(logging.INFO)
    answered = 0
    endings: list[BaseException] = []

    async def ask_until_closed(nc: NetconfClient) -> None:
        """dry-run again and again: each reads every stratum below the orchestrator."""
        nonlocal answered
        while True:
            try:
                await nc.dispatch(f"<dry-run xmlns='{INT_NS}'/>")
                answered += 1
            except RPCError as err:  # a stratum went away under the handler: an rpc-error, not a crash
                assert err.tag == "operation-failed", err
            except SessionClosedError as err:
                endings.append(err)
                return

    async def run() -> None:
        stack = Stack(default_topology())
        await stack.start()
        try:
            row = next(r for r in stack.table() if r.level == "orchestrator")
            user, password = row.read_write
            nc = await NetconfClient.connect(row.host, row.port, user, password=password)
            await nc.edit_config(CANDIDATE_INTENT, target="candidate")
            clients = [asyncio.create_task(ask_until_closed(nc)) for _ in range(CLIENTS)]
            await asyncio.sleep(BUSY_S)
        finally:
            await stack.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(*clients)
        nc.close()

    asyncio.run(asyncio.wait_for(run(), 120))
    assert answered > 0, "the orchestrator answered no dry-run before the stop: it was not busy"
    assert len(endings) == CLIENTS
    assert "internal error" not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
