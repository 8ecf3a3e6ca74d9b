"""A Python client of the entanglement-delivery API of the end nodes (docs/entanglement.md,
"Delivery"): the create-pairs and receive-pairs RPCs of qi-quantum-node over NETCONF, with the
node's SSH host key pinned.

    async with await EntanglementClient.connect(host, port, "admin", password, host_key) as alice:
        pairs = await alice.create("qn-bob", number=10, min_fidelity=0.8)
    # ... and at the other end, the same pair ids:
        halves = await bob.receive("qn-alice")
"""
from __future__ import annotations

from models import quantum_node as qm
from models.quantum_node import DeliveredPair
from netconf_core import NetconfClient, trusted_host_keys


class EntanglementClient:
    def __init__(self, session: NetconfClient) -> None:
        self.session = session

    @classmethod
    async def connect(cls, host: str, port: int, user: str, password: str, host_key: str) -> EntanglementClient:
        """A session to the end node at host:port, trusting exactly `host_key` (an OpenSSH public line)."""
        return cls(await NetconfClient.connect(host, port, user, password, known_hosts=trusted_host_keys(host_key)))

    async def create(self, remote_node: str, number: int = 1, min_fidelity: float = 0.5,
                     measure: bool = False, bases: tuple[str, ...] = (), max_time_s: float = 10.0
                     ) -> list[DeliveredPair]:
        """Pairs with `remote_node`, each of goodness >= min_fidelity when handed over; measured
        at once at both ends (in a basis chosen at random among `bases`, Z by default) with
        `measure`. Fewer than `number` when max_time_s passed first; RPCError when none came
        ('no time left'), when no session joins the two nodes, or the node cannot do it."""
        reply = await self.session.dispatch(qm.create_request(
            remote_node, number, min_fidelity, "measure-directly" if measure else "create-and-keep", bases,
            max_time_s), timeout=max_time_s + 30)
        return qm.read_pairs(reply)

    async def receive(self, remote_node: str, number: int = 1000) -> list[DeliveredPair]:
        """The other halves of the pairs `remote_node`'s applications created, each served once."""
        return qm.read_pairs(await self.session.dispatch(qm.receive_request(remote_node, number)))

    def close(self) -> None:
        self.session.close()

    async def __aenter__(self) -> EntanglementClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
