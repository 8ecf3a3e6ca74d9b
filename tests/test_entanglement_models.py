"""The entanglement modules (qi-quantum-node, qi-fabric, qi-entanglement-service,
qi-entanglement-intent): their valid instance documents are in tests/instances/ and checked by
test_models like every module's; here, documents each rule must refuse, with the message and
location libyang and yanglint give, and the modules in `qstrata models check` and `tree`."""
import pytest

from netconf_core.models import load_context
from test_models import libyang_check, yanglint_check
from tools import cli

MODULES = ["qi-quantum-node", "qi-fabric", "qi-entanglement-service", "qi-entanglement-intent"]

QN = 'xmlns="urn:qstrata:yang:qi-quantum-node" xmlns:qi-qn="urn:qstrata:yang:qi-quantum-node"'
NETWORKS = ('xmlns="urn:ietf:params:xml:ns:yang:ietf-network" '
            'xmlns:nt="urn:ietf:params:xml:ns:yang:ietf-network-topology" '
            'xmlns:qi-fab="urn:qstrata:yang:qi-fabric" xmlns:qi-qn="urn:qstrata:yang:qi-quantum-node"')


def node_link(link: str) -> str:
    return (f"<quantum-node {QN}><interfaces><interface><name>west</name></interface></interfaces>"
            f"<elementary-links><link><link-id>l1</link-id><peer-node>rep-b</peer-node>{link}</link>"
            "</elementary-links></quantum-node>")


def fabric_node(name: str, network_type: str) -> str:
    role = "<qi-fab:quantum-node><qi-fab:role>qi-qn:repeater</qi-fab:role></qi-fab:quantum-node>"
    return f"<node><node-id>{name}</node-id>{role if network_type else ''}</node>"


def fabric_link(network_type: str, link: str) -> str:
    return (f"<networks {NETWORKS}><network><network-id>f</network-id><network-types>{network_type}"
            f"</network-types>{fabric_node('a', network_type)}{fabric_node('b', network_type)}"
            "<nt:link><nt:link-id>a-b</nt:link-id><nt:source><nt:source-node>a</nt:source-node></nt:source>"
            "<nt:destination><nt:dest-node>b</nt:dest-node></nt:destination>"
            f"<qi-fab:entanglement-link>{link}</qi-fab:entanglement-link></nt:link></network></networks>")


def session(body: str) -> str:
    return ('<sessions xmlns="urn:qstrata:yang:qi-entanglement-service"><session><name>s1</name>'
            f"<source-endpoint>app-a</source-endpoint><destination-endpoint>app-c</destination-endpoint>{body}"
            "</session></sessions>")


def intent(extra: str, service: str) -> str:
    return ('<intents xmlns="urn:qstrata:yang:qi-intent" xmlns:e="urn:qstrata:yang:qi-entanglement-intent">'
            "<intent><name>pairs</name><endpoints><source-sae>app-a</source-sae>"
            f"<destination-sae>app-c</destination-sae></endpoints><min-rate>1</min-rate>{extra}"
            f"<e:entanglement-service>{service}</e:entanglement-service></intent></intents>")


INVALID = {
    "switch without port": (
        f"<quantum-node {QN}><interfaces><interface><name>west</name><fibre-attachment><switch>oxc</switch>"
        "</fibre-attachment></interface></interfaces></quantum-node>",
        "fibre-attachment names a switch but no port", "interface[name='west']/fibre-attachment"),
    "link on an unknown interface": (
        node_link("<interface>north</interface><type>single-click</type>"),
        'Invalid leafref value "north"', "link[link-id='l1']/interface"),
    "link type that is a node role": (
        node_link("<interface>west</interface><type>repeater</type>"),
        'identity not derived from the base "qi-quantum-node:elementary-link-type"', "link[link-id='l1']/type"),
    "fidelity threshold above 1": (
        node_link("<interface>west</interface><type>double-click</type>"
                  "<fidelity-threshold>1.5</fidelity-threshold>"),
        'value "1.5" is out of the allowed range', "link[link-id='l1']/fidelity-threshold"),
    "entanglement link outside a fabric": (
        fabric_link("", "<qi-fab:link-type>qi-qn:single-click</qi-fab:link-type>"),
        'When condition "../nw:network-types/qi-fab:entanglement-fabric" not satisfied',
        "link[link-id='a-b']/qi-fabric:entanglement-link"),
    "entanglement link without type": (
        fabric_link("<qi-fab:entanglement-fabric/>", "<qi-fab:length>10</qi-fab:length>"),
        'Mandatory node "link-type"', "entanglement-link/link-type"),
    "min-fidelity of a separable state": (
        session("<pair-rate>1</pair-rate><min-fidelity>0.4</min-fidelity>"),
        "min-fidelity below 0.5 asks for no entanglement", "session[name='s1']/min-fidelity"),
    "session asking for no pairs": (
        session("<min-fidelity>0.8</min-fidelity>"),
        "a session asks for a pair-rate, a number-of-pairs or both", "session[name='s1']"),
    "basis of a create-and-keep session": (
        session("<pair-rate>1</pair-rate><min-fidelity>0.8</min-fidelity><basis>X</basis>"),
        "When condition \"../delivery-type = 'measure-directly'\" not satisfied", "session[name='s1']/basis"),
    "entanglement intent on disjoint paths": (
        intent("<disjoint-paths>2</disjoint-paths>", "<e:min-fidelity>0.8</e:min-fidelity>"),
        "an entanglement intent has one path", "intent[name='pairs']/qi-entanglement-intent:entanglement-service"),
    "entanglement intent without min-fidelity": (
        intent("", "<e:max-age>0.5</e:max-age>"),
        'Mandatory node "min-fidelity"', "entanglement-service/min-fidelity"),
}


@pytest.fixture(scope="module")
def context():
    return load_context()


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_document_is_rejected(context, tmp_path, case):
    text, message, location = INVALID[case]
    with pytest.raises(Exception) as raised:
        libyang_check(context, text, "config")
    assert message in str(raised.value) and location in str(raised.value), str(raised.value)
    path = tmp_path / "invalid.xml"
    path.write_text(text)
    result = yanglint_check(path, "config")
    assert result.returncode != 0
    assert message in result.stderr and location in result.stderr, result.stderr


def test_the_same_documents_pass_once_fixed(context):
    """The invalid documents differ from valid ones by the broken rule only."""
    libyang_check(context, node_link("<interface>west</interface><type>single-click</type>"), "config")
    libyang_check(context, fabric_link("<qi-fab:entanglement-fabric/>",
                                       "<qi-fab:link-type>qi-qn:single-click</qi-fab:link-type>"), "config")
    libyang_check(context, session("<number-of-pairs>10</number-of-pairs><min-fidelity>0.8</min-fidelity>"
                                   "<delivery-type>measure-directly</delivery-type><basis>X</basis>"), "config")
    libyang_check(context, intent("<disjoint-paths>1</disjoint-paths>", "<e:min-fidelity>0.8</e:min-fidelity>"),
                  "config")


def test_models_check_passes_for_the_entanglement_modules(capsys):
    assert cli.main(["models", "check", *MODULES]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "all 4 modules pass"


def test_models_tree_shows_the_intent_augment_and_the_node(capsys):
    assert cli.main(["models", "tree", "qi-intent", "qi-entanglement-intent", "qi-quantum-node"]) == 0
    tree = capsys.readouterr().out
    assert "+--rw qi-eint:entanglement-service!" in tree
    assert "+--ro qi-eint:best-achievable-fidelity?" in tree
    assert "+--rw link* [link-id]" in tree
    assert "+---n fidelity-alarm" in tree
    assert "+---x inject-coherence-loss" in tree
