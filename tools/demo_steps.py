"""What both demos share: numbered steps that report instead of crashing, a summary with the
exit code, and the ETSI GS QKD 014 key exchange between two applications' key managers."""
from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

SAE_HEADER = "X-SAE-ID"   # the emulator's plain-HTTP stand-in for a TLS client certificate (insecure mode)
STEP_TIMEOUT_S = 30.0


class StepFailed(Exception):
    pass


@dataclass
class Result:
    title: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class Steps:
    """A story told step by step: each step prints its outcome; `summary` prints them all and
    gives the exit code (0 only if every step succeeded)."""

    timeout: float = STEP_TIMEOUT_S
    results: list[Result] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"      {text}", flush=True)

    async def step(self, title: str, action: Callable[[], Awaitable[str]]) -> bool:
        number = len(self.results) + 1
        print(f"[{number}] {title} ...", flush=True)
        started = time.monotonic()
        try:
            detail, ok = await action(), True
        except (StepFailed, OSError, TimeoutError) as error:
            detail, ok = str(error) or type(error).__name__, False
        except Exception as error:  # a demo step must report, not crash the shutdown
            detail, ok = f"{type(error).__name__}: {error}", False
        seconds = time.monotonic() - started
        self.results.append(Result(title, ok, detail, seconds))
        print(f"    {'ok' if ok else 'FAILED'} ({seconds:.1f} s): {detail}", flush=True)
        return ok

    def summary(self) -> int:
        print("\nSUMMARY", flush=True)
        for number, result in enumerate(self.results, 1):
            print(f"  [{'ok' if result.ok else 'FAILED'}] {number}. {result.title} ({result.seconds:.1f} s)")
        failed = [r for r in self.results if not r.ok]
        if failed:
            print(f"{len(failed)} step(s) failed: {failed[0].title}: {failed[0].detail}", flush=True)
            return 1
        print(f"all {len(self.results)} steps succeeded", flush=True)
        return 0


def as_sae(sae: str, tls: Callable[[str], ssl.SSLContext | None] | None) -> dict:
    """The request options that make an ETSI 014 call SAE `sae`'s: its client certificate
    (`tls(sae)`, a TLS context presenting it: the standard's way), or, when there is none (a
    stack in the insecure header mode), the X-SAE-ID header."""
    context = tls(sae) if tls is not None else None
    return {"ssl": context} if context is not None else {"headers": {SAE_HEADER: sae}}


async def exchange_keys(http, master: tuple[str, str], slave: tuple[str, str], number: int = 4, size: int = 256,
                        timeout: float = STEP_TIMEOUT_S,
                        tls: Callable[[str], ssl.SSLContext | None] | None = None) -> tuple[list[str], bool]:
    """enc_keys for the master SAE at its key manager's ETSI 014 API, dec_keys for the slave
    SAE at its own (each given as (API URL, SAE id)); retried while the key pools fill. Each
    SAE calls with its own client certificate, `tls(sae)` (a stack's `sae_ssl`), over HTTPS.
    Returns the key IDs and whether both ends got the same keys."""
    (master_api, master_sae), (slave_api, slave_sae) = master, slave
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{master_api}/api/v1/keys/{slave_sae}/enc_keys", **as_sae(master_sae, tls),
                            params={"number": str(number), "size": str(size)}) as reply:
            body = await reply.json()
        if reply.status == 200:
            break
        if reply.status != 503 or time.monotonic() > deadline:
            raise StepFailed(f"enc_keys answered {reply.status}: {body.get('message')}")
        await asyncio.sleep(0.1)
    sent = {k["key_ID"]: k["key"] for k in body["keys"]}
    async with http.post(f"{slave_api}/api/v1/keys/{master_sae}/dec_keys", **as_sae(slave_sae, tls),
                         json={"key_IDs": [{"key_ID": i} for i in sent]}) as reply:
        body = await reply.json()
        if reply.status != 200:
            raise StepFailed(f"dec_keys answered {reply.status}: {body.get('message')}")
    received = {k["key_ID"]: k["key"] for k in body["keys"]}
    return list(sent), received == sent
