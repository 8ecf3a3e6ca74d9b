"""The engine test model (tools/yang/qs-engine-test.yang): what the conformance runner and
the YANG-Push benchmark serve and edit. The tests load it from here too."""
from __future__ import annotations

import pathlib

from netconf_core.ns import Namespace

MODEL_DIR = pathlib.Path(__file__).resolve().parent / "yang"
MODULE = "qs-engine-test"
MODEL_FILE = MODEL_DIR / f"{MODULE}.yang"
NS = Namespace("urn:qstrata:yang:qs-engine-test")
