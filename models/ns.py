"""The namespaces of the data models the levels exchange, each named once (the protocol
namespaces are in `netconf_core.ns`). Each is a `Namespace`: `NW("node")` is a Clark name,
`NW.text(e, "node/node-id")` a leaf's text; see netconf_core/ns.py."""
from __future__ import annotations

from netconf_core.ns import Namespace

NW = Namespace("urn:ietf:params:xml:ns:yang:ietf-network")                      # RFC 8345
NT = Namespace("urn:ietf:params:xml:ns:yang:ietf-network-topology")             # RFC 8345
ALARMS = Namespace("urn:ietf:params:xml:ns:yang:ietf-alarms")                   # RFC 8632
ETSI_NODE = Namespace("urn:etsi:qkd:yang:etsi-qkd-node")                        # ETSI GS QKD 015
ETSI_TYPES = Namespace("urn:etsi:qkd:yang:etsi-qkd-node-types")
QI_TYPES = Namespace("urn:qstrata:yang:qi-types")
QI_ALARMS = Namespace("urn:qstrata:yang:qi-alarms")
NODE_EXT = Namespace("urn:qstrata:yang:qi-qkd-node-ext")
KEY_MANAGER = Namespace("urn:qstrata:yang:qi-key-manager")
OPTICAL_SWITCH = Namespace("urn:qstrata:yang:qi-optical-switch")
FIBRE_PLANT = Namespace("urn:qstrata:yang:qi-fibre-plant")
CONNECTIVITY = Namespace("urn:qstrata:yang:qi-connectivity")
FORWARDING = Namespace("urn:qstrata:yang:qi-forwarding")
SERVICE = Namespace("urn:qstrata:yang:qi-service")
INTENT = Namespace("urn:qstrata:yang:qi-intent")
FEDERATION = Namespace("urn:qstrata:yang:qi-federation")
FEDERATION_PEERING = Namespace("urn:qstrata:yang:qi-federation-peering")
QUANTUM_NODE = Namespace("urn:qstrata:yang:qi-quantum-node")
FABRIC = Namespace("urn:qstrata:yang:qi-fabric")
ENTANGLEMENT_SERVICE = Namespace("urn:qstrata:yang:qi-entanglement-service")
ENTANGLEMENT_INTENT = Namespace("urn:qstrata:yang:qi-entanglement-intent")
