"""Where the console draws the sites of its network, kept on the server so that a site an
operator dragged stays there after a reload and for every other browser.

One layout per network (the console's title names it), not per user: the map is the team's
shared picture, and the upper strata are drawn at the sites' places, so two people looking
at one network see the same thing. With a state directory it is a JSON file there
(`layouts/NETWORK.json`, replaced whole on each change, so a crash leaves the old or the
new one); without, it lives as long as the console does."""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
import tempfile

MAX_POSITIONS = 100_000
MAX_ID = 300
MAX_COORDINATE = 1e7


class LayoutError(ValueError):
    """A layout the console refuses (said precisely); nothing is kept of it."""


class LayoutStore:
    def __init__(self, network: str, directory: pathlib.Path | None = None):
        self.network = network
        self.path = directory / "layouts" / f"{_file_name(network)}.json" if directory else None
        self.positions: dict[str, dict[str, float]] = self._load()

    def _load(self) -> dict[str, dict[str, float]]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return validate(json.loads(self.path.read_text(encoding="utf-8")).get("positions"))
        except (OSError, ValueError, AttributeError):   # unreadable: start again rather than not at all
            return {}

    def update(self, positions: object, replace: bool = False) -> dict[str, dict[str, float]]:
        """Merge `positions` ({element id: {"x", "y"}}) into the layout (with `replace`: they
        are the layout) and keep it; the positions taken, or LayoutError."""
        taken = validate(positions)
        merged = dict(taken) if replace else {**self.positions, **taken}
        if len(merged) > MAX_POSITIONS:
            raise LayoutError(f"a layout holds at most {MAX_POSITIONS} positions")
        if self.path is not None:
            self._write({"network": self.network, "positions": merged})
        self.positions = merged
        return taken

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, scratch = tempfile.mkstemp(dir=self.path.parent, prefix=".layout-")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                json.dump(data, out, separators=(",", ":"))
            os.replace(scratch, self.path)
        except BaseException:
            pathlib.Path(scratch).unlink(missing_ok=True)
            raise


def validate(positions: object) -> dict[str, dict[str, float]]:
    if not isinstance(positions, dict):
        raise LayoutError("positions must be an object of element id to {x, y}")
    if len(positions) > MAX_POSITIONS:
        raise LayoutError(f"a layout holds at most {MAX_POSITIONS} positions")
    out = {}
    for key, point in positions.items():
        if not isinstance(key, str) or not key or len(key) > MAX_ID:
            raise LayoutError(f"an element id must be a name of 1..{MAX_ID} characters, got {str(key)[:40]!r}")
        if not isinstance(point, dict) or set(point) != {"x", "y"}:
            raise LayoutError(f"the position of {key} must be {{x, y}}")
        for axis in ("x", "y"):
            value = point[axis]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or abs(value) > MAX_COORDINATE:
                raise LayoutError(f"{axis} of {key} must be a finite number within +-{MAX_COORDINATE:g}, "
                                  f"got {value!r}")
        out[key] = {"x": float(point["x"]), "y": float(point["y"])}
    return out


def _file_name(network: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", network).lstrip(".")[:100] or "network"
