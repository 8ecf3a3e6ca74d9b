"""Where YANG modules are found: the project's yang/, the engine's own protocol modules
(netconf_core/yang: RFC 5277's, which pyang does not ship) and the IETF modules shipped by pyang."""
import pathlib
import sysconfig

PROJECT_YANG_DIR = pathlib.Path(__file__).resolve().parent.parent / "yang"
ENGINE_YANG_DIR = pathlib.Path(__file__).resolve().parent / "yang"
PYANG_MODULES_DIR = pathlib.Path(sysconfig.get_path("data")) / "share" / "yang" / "modules"
IETF_YANG_DIR = PYANG_MODULES_DIR / "ietf"
IANA_YANG_DIR = PYANG_MODULES_DIR / "iana"

SEARCH_DIRS = [PROJECT_YANG_DIR, ENGINE_YANG_DIR, IETF_YANG_DIR, IANA_YANG_DIR]
