"""Where YANG modules are found: the project's yang/ and the IETF modules shipped by pyang."""
import pathlib
import sysconfig

PROJECT_YANG_DIR = pathlib.Path(__file__).resolve().parent.parent / "yang"
PYANG_MODULES_DIR = pathlib.Path(sysconfig.get_path("data")) / "share" / "yang" / "modules"
IETF_YANG_DIR = PYANG_MODULES_DIR / "ietf"
IANA_YANG_DIR = PYANG_MODULES_DIR / "iana"

SEARCH_DIRS = [PROJECT_YANG_DIR, IETF_YANG_DIR, IANA_YANG_DIR]
