"""YANG-Push benchmark: on-change notification latency, from the moment an edit-config is sent
to the moment the subscriber has the push-change-update for it (RFC 8641), over real SSH
sessions to a server of the engine test model. The server, the editing session and the
subscribing session share one process and event loop, so the figure is the whole path:
request, validation, commit, diff of the selection, YANG Patch, notification, parse.

    qstrata bench push [--edits 200]
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import time

from tools.engine_test_model import MODEL_DIR, NS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--edits", type=int, default=200, help="edits, each waited for (default 200)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    latencies = asyncio.run(measure(args.edits))
    print(f"on-change latency, edit-config sent -> push-change-update received ({len(latencies)} edits): "
          f"p50 {percentile(latencies, 50) * 1e3:.2f} ms, p99 {percentile(latencies, 99) * 1e3:.2f} ms, "
          f"max {max(latencies) * 1e3:.2f} ms")
    return 0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(edits: int, timeout: float = 10.0) -> list[float]:
    from lxml import etree  # here: `qstrata bench --help` need not load the engine

    from netconf_core import NetconfClient, NetconfServer, Schema, User, standard_nacm

    password = secrets.token_urlsafe(12)
    server = NetconfServer(Schema(["qs-engine-test"], [MODEL_DIR]), {"admin": User(password=password)},
                           nacm=standard_nacm(["admin"], []))
    await server.start()
    try:
        editor = await NetconfClient.connect("127.0.0.1", server.port, "admin", password)
        subscriber = await NetconfClient.connect("127.0.0.1", server.port, "admin", password)
        subscription = await subscriber.establish_subscription(
            "running", xpath="/q:system", namespaces={"q": NS}, on_change=True, sync_on_start=False)
        latencies = []
        for i in range(edits):
            start = time.perf_counter()
            await editor.edit_config(f'<system xmlns="{NS}"><hostname>bench-{i}</hostname></system>')
            update = await subscription.next(timeout)
            latencies.append(time.perf_counter() - start)
            if update is None or f"bench-{i}".encode() not in etree.tostring(update):
                raise RuntimeError(f"edit {i}: the update does not carry it")
        await subscriber.delete_subscription(subscription.id)
        await subscriber.close_session()
        await editor.close_session()
        return latencies
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
