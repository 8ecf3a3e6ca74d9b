"""Model conformance of the project's YANG modules.

Every module lints with pyang and loads in yanglint and libyang.  The
instance documents under tests/instances/<module>/ are checked by both
libyang (the engine's validator) and yanglint (the same library behind an
independent front end): valid-config*, valid-data*, valid-rpc-* and
valid-notif-* documents must be accepted; every other document is listed in
INVALID with the error message and data location a user should see.
"""
import dataclasses
import pathlib
import re
import subprocess

import libyang
import pytest

from netconf_core.models import PROJECT_MODULES, load_context
from netconf_core.yangdirs import PROJECT_YANG_DIR, SEARCH_DIRS
from tools import bindings, cli, cmd_models

INSTANCES = pathlib.Path(__file__).parent / "instances"
REVISION = "2026-11-23"
DATA_MODULES = [module for module in PROJECT_MODULES if module not in bindings.TYPE_ONLY_MODULES]

VALID_KINDS = {"valid-config": "config", "valid-data": "data", "valid-rpc-": "rpc", "valid-notif-": "notif"}
"""File name prefix of a valid document -> its yanglint data type."""

OP_TYPES = {"rpc": libyang.DataType.RPC_YANG, "notif": libyang.DataType.NOTIF_YANG}


@dataclasses.dataclass(frozen=True)
class Invalid:
    module: str
    file: str
    kind: str  # config, data, rpc or notif
    message: str  # part of the error message
    location: str | None  # part of the data or schema path of the offending node

    def __str__(self) -> str:
        return f"{self.module}/{self.file}"


INVALID = [
    # ETSI GS QKD 015, including the three defects fixed in our edition
    Invalid("etsi-qkd-sdn-node", "missing-mandatory.xml", "config",
            'Mandatory node "qkdn_id"', "qkd_node/qkdn_id"),
    Invalid("etsi-qkd-sdn-node", "wrong-identity.xml", "config",
            'Invalid identityref "etsi-qkdn-types:ACTIVE"', "/qkdl_type"),
    Invalid("etsi-qkd-sdn-node", "out-of-range.xml", "config",
            'Value "4294967296" is out of type uint32', "qkd_interface/qkdi_id"),
    Invalid("etsi-qkd-sdn-node", "bad-pattern.xml", "config",
            'Unsatisfied pattern - "0"', "/phys_wavelength"),
    Invalid("etsi-qkd-sdn-node", "duplicate-key.xml", "config",
            'Duplicate instance of "qkd_interface"', "qkd_interface[qkdi_id='1']"),
    Invalid("etsi-qkd-sdn-node", "virt-leaf-on-phys-link.xml", "config",
            "When condition \"derived-from-or-self(qkdl_type, 'etsi-qkdn-types:VIRT')\" not satisfied",
            "/virt_bandwidth"),
    Invalid("etsi-qkd-sdn-node", "phys-perf-on-virt-link.xml", "data",
            "When condition \"derived-from-or-self(../../qkdl_type, 'etsi-qkdn-types:PHYS')\"",
            "qkdl_performance/phys_perf"),
    Invalid("etsi-qkd-sdn-node", "notif-wrong-severity.xml", "notif",
            'Invalid identityref "etsi-qkdn-types:OFF"', "alarm/link/severity"),
    # emulator extensions of the ETSI node
    Invalid("qi-qkd-node-ext", "out-of-range.xml", "config",
            'value "1.5" is out of the allowed range', "device-profile/eta-bob"),
    Invalid("qi-qkd-node-ext", "qber-threshold-out-of-range.xml", "config",
            'value "150.0" is out of the allowed range', "qi-qkd-node-ext:qber-alarm-threshold"),
    Invalid("qi-qkd-node-ext", "switch-without-port.xml", "config",
            "fibre-attachment names a switch but no port", "qi-qkd-node-ext:fibre-attachment"),
    Invalid("qi-qkd-node-ext", "attachment-mismatch.xml", "config",
            "fibre-attachment switch differs from qkdi_att_point device",
            "qi-qkd-node-ext:fibre-attachment"),
    Invalid("qi-qkd-node-ext", "wrong-type.xml", "config",
            'Invalid type uint64 value "fast"', "device-profile/f-rep"),
    # key manager
    Invalid("qi-key-manager", "missing-mandatory.xml", "config",
            'Mandatory node "peer-km-id"', "key-pool/peer-km-id"),
    Invalid("qi-key-manager", "dangling-leafref.xml", "config",
            'Invalid leafref value "b0000000-0000-4000-8000-000000000009"', "/via-link-id"),
    Invalid("qi-key-manager", "out-of-range.xml", "config",
            'value "0" is out of the allowed range', "qos/rate"),
    Invalid("qi-key-manager", "duplicate-key.xml", "config",
            'Duplicate instance of "key-pool"',
            "key-pool[link-id='b0000000-0000-4000-8000-000000000001']"),
    Invalid("qi-key-manager", "wrong-next-hop.xml", "config",
            "next-hop-km-id is not the peer of the via-link-id pool",
            "route[destination-km-id='km-d']"),
    Invalid("qi-key-manager", "key-size-not-bytes.xml", "config",
            "key-size must be a multiple of 8 bits", "qos/key-size"),
    Invalid("qi-key-manager", "duplicate-sae-pair.xml", "config",
            'Unique data leaf(s) "master-sae-id slave-sae-id" not satisfied',
            "session[session-id='two']"),
    Invalid("qi-key-manager", "route-to-self.xml", "config",
            "a route cannot lead to the key manager itself", "route[destination-km-id='km-a']"),
    # optical switch
    Invalid("qi-optical-switch", "missing-mandatory.xml", "config",
            'Mandatory node "out-port"', "cross-connect/out-port"),
    Invalid("qi-optical-switch", "dangling-leafref.xml", "config",
            'Invalid leafref value "9"', "cross-connect[name='nowhere']/out-port"),
    Invalid("qi-optical-switch", "out-of-range.xml", "config",
            'value "10000" is out of the allowed range', "cross-connect[name='too-far']/wavelength"),
    Invalid("qi-optical-switch", "duplicate-key.xml", "config",
            'Duplicate instance of "port"', "port[port-id='1']"),
    Invalid("qi-optical-switch", "port-reused-on-wavelength.xml", "config",
            "a port is already used on this wavelength", "cross-connect[name='first']"),
    Invalid("qi-optical-switch", "port-reused-across-directions.xml", "config",
            "a port is already used on this wavelength", "cross-connect[name='first']"),
    Invalid("qi-optical-switch", "port-reused-whole-fibre.xml", "config",
            "a whole-fibre cross-connect needs its ports to itself", "cross-connect[name='whole']"),
    Invalid("qi-optical-switch", "loopback.xml", "config",
            "a cross-connect joins two different ports", "cross-connect[name='loop']"),
    # fibre plant: the emulation's own management interface
    Invalid("qi-fibre-plant", "clock-stopped.xml", "config",
            'value "0.0" is out of the allowed range', "clock/speed"),
    Invalid("qi-fibre-plant", "port-zero.xml", "data",
            'value "0" is out of the allowed range', "span[span-id='quintin-concepcion']/a-end/port"),
    Invalid("qi-fibre-plant", "rpc-no-eavesdropper.xml", "rpc",
            'value "0.0" is out of the allowed range', "attach-eavesdropper/fraction"),
    Invalid("qi-fibre-plant", "rpc-missing-span.xml", "rpc",
            'Mandatory node "span-id"', "repair-span/span-id"),
    Invalid("qi-fibre-plant", "notif-unknown-change.xml", "notif",
            'Invalid enumeration value "melted"', "span-status-change/change"),
    # connectivity controller north
    Invalid("qi-connectivity", "missing-mandatory.xml", "config",
            'Mandatory node "length"', "fibre-span/length"),
    Invalid("qi-connectivity", "dangling-leafref.xml", "config",
            'Invalid leafref value "qkd-bob-1"', "optical-path[name='lost']/destination/tp"),
    Invalid("qi-connectivity", "out-of-range.xml", "config",
            'value "11.0" is out of the allowed range', "fibre-span/attenuation"),
    Invalid("qi-connectivity", "wrong-identity.xml", "data",
            'Invalid identityref "qit:connectivity"', "fibre-span/active-faults"),
    Invalid("qi-connectivity", "duplicate-key.xml", "config",
            'Duplicate instance of "optical-path"', "optical-path[name='alice-carol']"),
    Invalid("qi-connectivity", "same-endpoints.xml", "config",
            "an optical path cannot start and end at the same port", "optical-path[name='loop']"),
    Invalid("qi-connectivity", "span-outside-fibre-network.xml", "config",
            'When condition "../nw:network-types/qi-conn:fibre-network" not satisfied',
            "link[link-id='span-a-c']/qi-connectivity:fibre-span"),
    Invalid("qi-connectivity", "notif-wrong-cause.xml", "notif",
            'Invalid identityref "qit:quantum-forwarding"', "span-down/cause"),
    # forwarding controller north
    Invalid("qi-forwarding", "missing-mandatory.xml", "config",
            'Mandatory node "qkdl-id"', "qkd-link/qkdl-id"),
    Invalid("qi-forwarding", "wrong-identity.xml", "config",
            'Invalid identityref "etsi-qkdn-types:ACTIVE"', "qkd-link/link-type"),
    Invalid("qi-forwarding", "out-of-range.xml", "config",
            'value "10000" is out of the allowed range', "qkd-link/wavelength"),
    Invalid("qi-forwarding", "duplicate-key.xml", "config",
            'Duplicate instance of "node"', "node[node-id='bob']"),
    Invalid("qi-forwarding", "virt-without-supporting-link.xml", "config",
            "a VIRT link must name its PHYS hops as supporting-link",
            "link[link-id='alice-carol']/qi-forwarding:qkd-link"),
    # RFC 8345 supporting links do not require their target; our must rule
    # dereferences them, and libyang reports the dangling value itself.
    Invalid("qi-forwarding", "virt-hop-missing.xml", "config",
            'Invalid leafref value "bob-dave"', None),
    Invalid("qi-forwarding", "virt-hop-not-phys.xml", "config",
            "a supporting-link is not a PHYS link of this network",
            "link[link-id='carol-alice']/qi-forwarding:qkd-link"),
    Invalid("qi-forwarding", "optical-path-on-virt-link.xml", "config",
            "When condition \"derived-from-or-self(../link-type, 'etsi-qkdn-types:PHYS')\"",
            "qkd-link/optical-path"),
    Invalid("qi-forwarding", "notif-qber-out-of-range.xml", "notif",
            'value "130.0" is out of the allowed range', "qber-alarm/qber"),
    # service controller north
    Invalid("qi-service", "missing-mandatory.xml", "config",
            'Mandatory node "rate"', "session/rate"),
    Invalid("qi-service", "out-of-range.xml", "config",
            'value "120.0" is out of the allowed range', "session[name='vpn-a-c']/qber-ceiling"),
    Invalid("qi-service", "hops-out-of-range.xml", "config",
            'value "0" is out of the allowed range', "session[name='vpn-a-c']/max-hops"),
    Invalid("qi-service", "duplicate-key.xml", "config",
            'Duplicate instance of "session"', "session[name='vpn-a-c']"),
    Invalid("qi-service", "duplicate-sae-pair.xml", "config",
            'Unique data leaf(s) "source-sae destination-sae" not satisfied',
            "session[name='vpn-a-c-again']"),
    Invalid("qi-service", "same-endpoints.xml", "config",
            "source-sae and destination-sae must differ", "session[name='vpn-a-c']"),
    Invalid("qi-service", "bad-sae-id.xml", "config",
            'Unsatisfied pattern - "alice vpn"', "session[name='vpn-a-c']/source-sae"),
    Invalid("qi-service", "rpc-missing-rate.xml", "rpc",
            'Mandatory node "rate"', "plan-path/rate"),
    Invalid("qi-service", "segment-without-border.xml", "config",
            "a segment enters or leaves the domain", "session[name='fed-xd-1']/segment"),
    # orchestrator north
    Invalid("qi-intent", "segment-without-border.xml", "config",
            "a segment enters or leaves the domain", "intent[name='fed-xd-1']/segment"),
    Invalid("qi-intent", "missing-mandatory.xml", "config",
            'Mandatory node "min-rate"', "intent/min-rate"),
    Invalid("qi-intent", "out-of-range.xml", "config",
            'value "5" is out of the allowed range', "intent[name='vpn-a-c']/disjoint-paths"),
    Invalid("qi-intent", "duplicate-key.xml", "config",
            'Duplicate instance of "intent"', "intent[name='vpn-a-c']"),
    Invalid("qi-intent", "same-endpoints.xml", "config",
            "the two endpoints of an intent must differ", "intent[name='vpn-a-c']"),
    Invalid("qi-intent", "key-size-not-bytes.xml", "config",
            "key-size must be a multiple of 8 bits", "intent[name='vpn-a-c']/key-size"),
    Invalid("qi-intent", "wrong-identity.xml", "data",
            'Invalid identityref "qit:service"', "conditions/condition/type"),
    Invalid("qi-intent", "unknown-state.xml", "data",
            'Invalid enumeration value "sleeping"', "intent[name='vpn-a-c']/state"),
    Invalid("qi-intent", "notif-unknown-state.xml", "notif",
            'Invalid enumeration value "paused"', "intent-state-change/to"),
    # federation platform
    Invalid("qi-federation", "missing-mandatory.xml", "config",
            'Mandatory node "ssh-public-key"', "member/ssh-public-key"),
    Invalid("qi-federation", "dangling-leafref.xml", "config",
            'Invalid leafref value "domain-z"', "agreement[agreement-id='a-z']/member-b"),
    Invalid("qi-federation", "out-of-range.xml", "config",
            'Value "70000" is out of type uint16', "agent/port"),
    Invalid("qi-federation", "duplicate-key.xml", "config",
            'Duplicate instance of "member"', "member[member-id='domain-a']"),
    Invalid("qi-federation", "self-agreement.xml", "config",
            "an agreement is between two different members", "agreement[agreement-id='a-a']"),
    Invalid("qi-federation", "duplicate-agreement.xml", "config",
            'Unique data leaf(s) "member-a member-b" not satisfied',
            "agreement[agreement-id='second']"),
    Invalid("qi-federation", "reversed-agreement.xml", "config",
            "another agreement already joins these two members", "agreements/agreement"),
    Invalid("qi-federation", "bad-ssh-key.xml", "config",
            'Unsatisfied pattern - "hunter2"', "member[member-id='domain-a']/ssh-public-key"),
    Invalid("qi-federation", "unknown-role.xml", "config",
            'Invalid enumeration value "owner"', "member[member-id='domain-a']/role"),
    Invalid("qi-federation", "rpc-bad-ssh-key.xml", "rpc",
            'Unsatisfied pattern - "ssh-dss', "apply-membership/ssh-public-key"),
]


def valid_documents() -> list[tuple[str, str, str]]:
    documents = []
    for path in sorted(INSTANCES.glob("*/*.xml")):
        for prefix, kind in VALID_KINDS.items():
            if path.name.startswith(prefix):
                documents.append((path.parent.name, path.name, kind))
    return documents


@pytest.fixture(scope="module")
def context() -> libyang.Context:
    return load_context()


def libyang_check(context: libyang.Context, text: str, kind: str) -> None:
    """Parse and validate a document as the NETCONF engine would; raise LibyangError if invalid."""
    if kind in OP_TYPES:
        context.parse_op_mem("xml", text, OP_TYPES[kind]).validate_op(OP_TYPES[kind])
        return
    # A full datastore would carry ietf-yang-library's state too: validate
    # state documents against the modules they use only.
    tree = context.parse_data_mem(text, "xml", strict=True, no_state=kind == "config",
                                  validate_present=kind == "data")
    if tree is not None:
        tree.free()


def yanglint_check(path: pathlib.Path, kind: str) -> subprocess.CompletedProcess:
    command = ["yanglint", "-D", "-t", kind]
    for directory in SEARCH_DIRS:
        command += ["-p", str(directory)]
    command += [str(PROJECT_YANG_DIR / f"{module}.yang") for module in PROJECT_MODULES]
    command.append(str(path))
    return subprocess.run(command, capture_output=True, text=True)


# --- the modules ---------------------------------------------------------------------


def test_yang_dir_holds_exactly_the_project_modules():
    assert sorted(cmd_models.modules_in()) == sorted(PROJECT_MODULES)


EXPECTED_NAMESPACES = {
    "etsi-qkd-sdn-node": ("urn:etsi:qkd:yang:etsi-qkd-node", "etsi-qkdn"),
    "etsi-qkd-node-types": ("urn:etsi:qkd:yang:etsi-qkd-node-types", "etsi-qkdn-types"),
}
"""The ETSI modules keep ETSI's namespace and prefix; ours are urn:qstrata:yang:<module>."""


@pytest.mark.parametrize("module", PROJECT_MODULES)
def test_module_header(module):
    text = (PROJECT_YANG_DIR / f"{module}.yang").read_text()
    assert re.search(r"^  yang-version 1\.1;$", text, re.MULTILINE)
    namespace = re.search(r'^  namespace "([^"]+)";$', text, re.MULTILINE).group(1)
    loaded = load_context([module]).get_module(module)
    if module in EXPECTED_NAMESPACES:
        assert (namespace, loaded.prefix()) == EXPECTED_NAMESPACES[module]
    else:
        assert namespace == f"urn:qstrata:yang:{module}"
    assert [revision.date() for revision in loaded.revisions()] == [REVISION]


@pytest.mark.parametrize("module", PROJECT_MODULES)
def test_pyang_lint(module):
    result = cmd_models.pyang_lint(module)
    assert result.passed, result.output


@pytest.mark.parametrize("module", PROJECT_MODULES)
def test_yanglint_loads(module):
    result = cmd_models.yanglint_load(module)
    assert result.passed, result.output


@pytest.mark.parametrize("module", PROJECT_MODULES)
def test_libyang_loads(module):
    assert load_context([module]).get_module(module).implemented()


def test_empty_datastore_is_valid(context):
    """No module has mandatory top-level data (the ETSI public text's qkd_node did)."""
    libyang_check(context, "", "config")  # raises 'Mandatory node ...' otherwise


# --- instance documents --------------------------------------------------------------


def test_every_instance_document_is_checked():
    on_disk = {(path.parent.name, path.name) for path in INSTANCES.glob("*/*.xml")}
    checked = {(module, name) for module, name, _ in valid_documents()}
    checked |= {(case.module, case.file) for case in INVALID}
    assert on_disk == checked
    assert {case.module for case in INVALID} <= set(PROJECT_MODULES)


@pytest.mark.parametrize("module", DATA_MODULES)
def test_every_data_module_has_valid_config_and_data(module):
    kinds = {kind for owner, _, kind in valid_documents() if owner == module}
    assert {"config", "data"} <= kinds


@pytest.mark.parametrize(("module", "name", "kind"), valid_documents(),
                         ids=[f"{module}/{name}" for module, name, _ in valid_documents()])
def test_valid_document_is_accepted(context, module, name, kind):
    path = INSTANCES / module / name
    libyang_check(context, path.read_text(), kind)
    result = yanglint_check(path, kind)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("module", "name"), [(m, n) for m, n, k in valid_documents() if k == "data"],
                         ids=[f"{m}/{n}" for m, n, k in valid_documents() if k == "data"])
def test_valid_data_document_has_state(context, module, name):
    """A 'data' document must really carry state: read as configuration, it is refused."""
    with pytest.raises(libyang.LibyangError, match="Unexpected data state node"):
        libyang_check(context, (INSTANCES / module / name).read_text(), "config")


@pytest.mark.parametrize("case", INVALID, ids=str)
def test_invalid_document_is_rejected(context, case):
    path = INSTANCES / case.module / case.file
    with pytest.raises(libyang.LibyangError) as raised:
        libyang_check(context, path.read_text(), case.kind)
    assert case.message in str(raised.value)
    if case.location is not None:
        assert case.location in str(raised.value)

    result = yanglint_check(path, case.kind)
    assert result.returncode != 0
    assert case.message in result.stderr
    if case.location is not None:
        assert case.location in result.stderr


# --- qstrata models ------------------------------------------------------------------


def test_models_tree_shows_data_actions_and_notifications(capsys):
    assert cli.main(["models", "tree", "qi-intent"]) == 0
    tree = capsys.readouterr().out
    assert "module: qi-intent" in tree
    assert "+--rw intent* [name]" in tree
    assert "+--ro state?" in tree
    assert "+---x replan" in tree
    assert "+---n intent-state-change" in tree


def test_models_tree_refuses_an_unknown_module(capsys):
    assert cli.main(["models", "tree", "qi-nothing"]) == 2
    assert "no module 'qi-nothing'" in capsys.readouterr().err


def test_models_check_passes_with_a_table(capsys):
    assert cli.main(["models", "check", "qi-types", "etsi-qkd-sdn-node"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["module", "pyang", "--lint", "yanglint"]
    assert lines[1].split() == ["qi-types", "pass", "pass"]
    assert lines[2].split() == ["etsi-qkd-sdn-node", "pass", "pass"]
    assert lines[-1] == "all 2 modules pass"


def test_models_check_fails_on_a_broken_module(tmp_path, capsys):
    (tmp_path / "qi-types.yang").write_text((PROJECT_YANG_DIR / "qi-types.yang").read_text())
    (tmp_path / "qi-broken.yang").write_text("""module qi-broken {
  yang-version 1.1;
  namespace "urn:qstrata:yang:qi-broken";
  prefix qib;
  organization "qstrata project";
  contact "qstrata maintainers";
  description "A module with an undescribed leaf.";
  revision 2026-11-23 {
    description "Initial revision.";
    reference "None.";
  }
  leaf orphan {
    type string;
  }
}
""")
    assert cli.main(["models", "check", "--yang-dir", str(tmp_path)]) == 1
    report = capsys.readouterr().out.splitlines()
    assert report[1].split() == ["qi-broken", "FAIL", "pass"]
    assert report[2].split() == ["qi-types", "pass", "pass"]
    assert "1 of 2 modules fail: qi-broken" in report
    assert "--- qi-broken: pyang --lint" in report
    assert any('statement "leaf" must have a "description" substatement' in line for line in report)


# --- bindings ------------------------------------------------------------------------


def test_bindings_of_every_data_module_generate_and_import(tmp_path, capsys):
    assert cli.main(["models", "bindings", "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / f"{bindings.binding_name(m)}.py") for m in DATA_MODULES]
    for module in DATA_MODULES:
        binding = bindings.load(module, tmp_path)
        assert hasattr(binding, bindings.binding_name(module))


def test_bindings_refuse_a_types_only_module(tmp_path, capsys):
    assert cli.main(["models", "bindings", "--out", str(tmp_path), "qi-types"]) == 1
    assert "qi-types: not a project module with data nodes" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_intent_round_trips_through_bindings_xml_and_libyang(tmp_path, context):
    from lxml import etree
    from pyangbind.lib.serialise import pybindIETFXMLDecoder, pybindIETFXMLEncoder

    binding = bindings.load("qi-intent", bindings.generate("qi-intent", tmp_path).parent)
    model = binding.qi_intent()
    intent = model.intents.intent.add("bank-a-z")
    intent.endpoints.source_sae = "bank-a"
    intent.endpoints.destination_sae = "bank-z"
    intent.min_rate = 50000
    intent.disjoint_paths = 2
    intent.avoid_nodes.append("erin")
    intent.qber_ceiling = "4.5"
    intent.allow_federation = True
    with pytest.raises(ValueError):
        intent.disjoint_paths = 5  # the binding enforces the range too

    document = pybindIETFXMLEncoder.serialise(model)
    # the encoder wraps the module's top-level nodes in an element named after the module
    wrapper = etree.fromstring(document.encode())
    data = "".join(etree.tostring(child, encoding="unicode") for child in wrapper)
    tree = context.parse_data_mem(data, "xml", strict=True, no_state=True)
    assert tree.print_dict(with_siblings=True) == {"intents": {"intent": [{
        "name": "bank-a-z",
        "endpoints": {"source-sae": "bank-a", "destination-sae": "bank-z"},
        "min-rate": 50000, "disjoint-paths": 2, "avoid-nodes": ["erin"],
        "qber-ceiling": 4.5, "allow-federation": True}]}}
    tree.free()

    loaded = pybindIETFXMLDecoder.decode(document, binding, "qi_intent")
    assert loaded.get(filter=True) == model.get(filter=True)
    assert loaded.intents.intent["bank-a-z"].endpoints.destination_sae == "bank-z"


def test_libyang_rejects_what_the_binding_cannot_check(tmp_path, context):
    """Cross-leaf rules (must) are libyang's: a binding happily builds an intent to itself."""
    from lxml import etree
    from pyangbind.lib.serialise import pybindIETFXMLEncoder

    binding = bindings.load("qi-intent", bindings.generate("qi-intent", tmp_path).parent)
    model = binding.qi_intent()
    intent = model.intents.intent.add("loop")
    intent.endpoints.source_sae = intent.endpoints.destination_sae = "bank-a"
    intent.min_rate = 1
    wrapper = etree.fromstring(pybindIETFXMLEncoder.serialise(model).encode())
    data = "".join(etree.tostring(child, encoding="unicode") for child in wrapper)
    with pytest.raises(libyang.LibyangError, match="the two endpoints of an intent must differ"):
        context.parse_data_mem(data, "xml", strict=True, no_state=True)
