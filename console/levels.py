"""Who the console talks to, and who may use it.

A `LevelAccess` is one NETCONF server (a controller, the orchestrator, or a device of an
emulated network) with an account per role. The console reads every level with the
read-only account, and acts with the account of the role of the person logged in, so a
level's NACM judges each action as that person's."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from netconf_core import Endpoint

READ_WRITE = "read-write"
READ_ONLY = "read-only"
ROLES = (READ_WRITE, READ_ONLY)
CONTROLLERS = ("connectivity", "forwarding", "service", "orchestrator")
DEVICE_KINDS = ("fibre-plant", "optical-switch", "qkd-node", "key-manager")


@dataclass(frozen=True)
class LevelAccess:
    kind: str                 # connectivity, forwarding, service, orchestrator, or a device kind
    name: str
    host: str
    port: int
    accounts: dict[str, tuple[str, str]] = field(hash=False)   # role -> (user, password)
    host_key: str | None = None     # the server's OpenSSH public key line (pinned)
    known_hosts: str | None = None  # or a known_hosts file

    def __post_init__(self) -> None:
        if not self.host_key and not self.known_hosts:
            raise ValueError(f"level {self.name} ({self.host}:{self.port}) pins no host key: give its host key "
                             "or a known_hosts file")
        if set(self.accounts) - set(ROLES) or READ_ONLY not in self.accounts:
            raise ValueError(f"level {self.name}: accounts must be given for the roles {', '.join(ROLES)}")

    def endpoint(self, role: str = READ_ONLY) -> Endpoint:
        """How to reach this level as the account of `role` (KeyError when it has none)."""
        user, password = self.accounts[role]
        return Endpoint(self.name, self.host, self.port, user, password, host_key=self.host_key,
                        known_hosts=self.known_hosts)


@dataclass(frozen=True)
class ConsoleUser:
    """A person who may log in to the console, and the role they act in."""

    name: str
    password: str
    role: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"console user {self.name}: role must be one of {', '.join(ROLES)}, not {self.role!r}")


def authenticate(users: dict[str, ConsoleUser], name: str, password: str) -> ConsoleUser | None:
    """The user whose name and password these are, or None (compared in constant time)."""
    user = users.get(name)
    expected = user.password if user else "\0" * max(len(password), 1)
    ok = hmac.compare_digest(expected.encode(), password.encode())
    return user if user is not None and ok else None
