"""The entanglement levels as processes of their own (docs/entanglement.md, docs/deployment.md):
the fabric controller (`qstrata run fabric`) and the entanglement service controller
(`qstrata run entanglement`), built from their deployments, and what `qstrata up` writes for
them when its topology has quantum nodes. The levels are the ones tools/stack.py composes in
one process; here each is given its peers from its deployment file instead.
"""
from __future__ import annotations

import dataclasses
import pathlib

from tools.deployment import ENTANGLEMENT_LEVELS, Deployment, EntanglementPart, FabricPart, Login, Peer


def entanglement_level(d: Deployment, nodes: list, common: dict):
    """The controller of deployment `d` (level fabric or entanglement) over the quantum nodes
    `nodes` (netconf_core Endpoints); `common`: the server settings every controller takes."""
    from tools.deployment import endpoint

    if d.level == "fabric":
        from controller.fabric import FabricController

        connectivity = d.part.connectivity if d.part is not None else None
        return FabricController(d.name, nodes, connectivity=endpoint(d.peer(connectivity)) if connectivity else None,
                                state_dir=d.state_dir, **common)
    from controller.entanglement import EntanglementController

    return EntanglementController(d.name, nodes, endpoint(d.peer(d.part.fabric)), state_dir=d.state_dir, **common)


def stack_levels(topology, levels: tuple[str, ...]) -> tuple[str, ...]:
    """The levels of a stack over `topology`, bottom-up: `levels` (the orchestrator last), with
    the two entanglement levels before the orchestrator when the topology has quantum nodes."""
    if not topology.quantum_nodes:
        return levels
    return levels[:-1] + ENTANGLEMENT_LEVELS + levels[-1:]


def add_entanglement_levels(deployments: dict[str, Deployment], listen, users: tuple[Login, ...],
                            nodes: tuple[Peer, ...], controller, state_dir: pathlib.Path) -> None:
    """Add to the deployments `qstrata up` writes those of the two levels, and make the
    orchestrator their client. `listen(level)` and `controller(level)` (a Peer) are those of
    the other levels; `nodes`: the quantum nodes, as peers."""
    deployments["fabric"] = Deployment("fabric", "fabric", listen("fabric"), users,
                                       nodes + (controller("connectivity"),), state_dir / "fabric",
                                       FabricPart("connectivity"))
    deployments["entanglement"] = Deployment("entanglement", "entanglement", listen("entanglement"), users,
                                             nodes + (controller("fabric"),), state_dir / "entanglement",
                                             EntanglementPart("fabric"))
    orchestrator = deployments["orchestrator"]
    deployments["orchestrator"] = dataclasses.replace(
        orchestrator, peers=orchestrator.peers + (controller("entanglement"),),
        part=dataclasses.replace(orchestrator.part, entanglement="entanglement"))
