"""The device table a devices level prints (`qstrata devices up`, `qstrata run devices`): who
listens where. `parse_table` reads it back: the parent of several device workers joins
theirs (tools/device_workers.py)."""
from __future__ import annotations

COLUMNS = ("DEVICE", "KIND", "NETCONF", "MODULES", "ETSI 014")
RESTCONF = "RESTCONF"


def format_table(rows: list) -> str:
    """The rows of `DeviceHost.table()` as aligned text."""
    restconf = any(r.restconf_url for r in rows)  # a RESTCONF column when the QKD nodes serve it
    header = COLUMNS + ((RESTCONF,) if restconf else ())
    lines = [(r.id, r.kind, f"{r.host}:{r.port}", " ".join(r.modules), r.etsi014_url or "-")
             + ((r.restconf_url or "-",) if restconf else ()) for r in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header] + lines)


def parse_table(lines: list[str]) -> list:
    """The rows (devices.host.DeviceRow, without host keys) of a table `format_table` made;
    `lines` may hold other lines before its header. Cells are cut where the header's are."""
    from devices.host import DeviceRow

    start = next(i for i, line in enumerate(lines) if line.startswith(COLUMNS[0] + " "))
    header = lines[start]
    names = COLUMNS + ((RESTCONF,) if RESTCONF in header else ())
    offsets = [header.index(name) for name in names] + [None]
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = [line[offsets[i]:offsets[i + 1]].strip() for i in range(len(names))]
        host, port = cells[2].rsplit(":", 1)
        rows.append(DeviceRow(cells[0], cells[1], host, int(port), tuple(cells[3].split()),
                              None if cells[4] == "-" else cells[4], True,
                              restconf_url=cells[5] if len(cells) > 5 and cells[5] != "-" else None))
    return rows
