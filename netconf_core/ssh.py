"""SSH settings shared by our NETCONF server and client."""
from __future__ import annotations

import asyncssh

# AES-GCM first: with AES-NI it costs a fraction of chacha20-poly1305 per packet, which is
# most of the CPU of a controller syncing a thousand devices. The rest keep interoperability
# with clients and servers that lack it (paramiko, OpenSSH builds without GCM).
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes128-ctr", "aes192-ctr", "aes256-ctr"]

# Our servers' asyncssh options: bytes, not text; the netconf subsystem only, so no SCP and no
# line editor (it would sit in the path of every byte); no keepalives.
SERVER_OPTIONS = {"encoding": None, "allow_scp": False, "line_editor": False, "keepalive_interval": 0,
                  "encryption_algs": ENCRYPTION_ALGS}


class NetconfSubsystemChannel(asyncssh.SSHServerSession):
    """An SSH channel that accepts the netconf subsystem and nothing else (no shell, no exec)."""

    chan: asyncssh.SSHServerChannel | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "netconf"
