"""The durable intent store: SQLite in WAL mode, in a directory the user names.

It holds what the orchestrator must not forget across a restart: each intent's
configuration (as the operator committed it), its lifecycle state with the history of
its transitions (a transition repeated in a loop is one entry with a count), what the
orchestrator last observed of it (session, paths, conditions),
and the QKD links the orchestrator created and which intents use them. Links are recorded
before they are requested (write-ahead), so that a restart never loses track of a link it
may have created; the reconcile loop then compares the record with the network.
"""
from __future__ import annotations

import datetime as dt
import json
import pathlib
import sqlite3
from dataclasses import dataclass, field
from typing import Any

DB_NAME = "intents.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS intent (
    name        TEXT PRIMARY KEY,
    config      TEXT NOT NULL,             -- the intent's qi-intent configuration, XML
    created     INTEGER NOT NULL,          -- creation order, to break priority ties
    deleted     INTEGER NOT NULL DEFAULT 0,-- removed from the configuration, teardown pending
    state       TEXT NOT NULL,
    state_since TEXT NOT NULL,
    reason      TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT '{}', -- JSON: session, paths, conditions, observed rate
    generation  INTEGER NOT NULL DEFAULT 1 -- 1 when created, one more for each change of config
);
CREATE TABLE IF NOT EXISTS transition (
    intent     TEXT NOT NULL REFERENCES intent(name) ON DELETE CASCADE,
    sequence   INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    time       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    count      INTEGER NOT NULL DEFAULT 1, -- times it happened in a row (see IntentStore.transition)
    PRIMARY KEY (intent, sequence)
);
CREATE TABLE IF NOT EXISTS created_link (
    link_id TEXT PRIMARY KEY,
    spec    TEXT NOT NULL                  -- JSON: what was asked of the forwarding stratum
);
CREATE TABLE IF NOT EXISTS link_claim (
    link_id TEXT NOT NULL REFERENCES created_link(link_id) ON DELETE CASCADE,
    intent  TEXT NOT NULL,
    PRIMARY KEY (link_id, intent)
);
"""


def timestamp(moment: dt.datetime | None = None) -> str:
    """YANG date-and-time in UTC, to the millisecond."""
    moment = moment or dt.datetime.now(dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


SETTLED = ("active", "removed")
"""States that end a run of transitions: a repeat is only looked for since the last of them."""


@dataclass(frozen=True)
class Transition:
    sequence: int
    from_state: str | None
    to_state: str
    time: str
    reason: str
    count: int = 1  # how many times it happened since the intent last settled; time is the latest


@dataclass
class IntentRecord:
    name: str
    config: str
    created: int
    deleted: bool
    state: str
    state_since: str
    reason: str
    status: dict[str, Any] = field(default_factory=dict)
    generation: int = 1  # of its configuration (qi-intent generation)


class IntentStore:
    def __init__(self, directory: str | pathlib.Path):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_NAME
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        if "count" not in {row["name"] for row in self.db.execute("PRAGMA table_info(transition)")}:
            self.db.execute("ALTER TABLE transition ADD COLUMN count INTEGER NOT NULL DEFAULT 1")  # an older store
        if "generation" not in {row["name"] for row in self.db.execute("PRAGMA table_info(intent)")}:
            self.db.execute("ALTER TABLE intent ADD COLUMN generation INTEGER NOT NULL DEFAULT 1")  # an older store
        # The link tables as an index in memory, kept by every write below (this process is the
        # store's only writer): a pass asks for each intent's claims without reading the tables.
        self._created: set[str] = {r[0] for r in self.db.execute("SELECT link_id FROM created_link")}
        self._claims: dict[str, set[str]] = {}  # intent -> the created links it claims
        for link_id, intent in self.db.execute("SELECT link_id, intent FROM link_claim"):
            self._claims.setdefault(intent, set()).add(link_id)

    def close(self) -> None:
        self.db.close()

    @property
    def journal_mode(self) -> str:
        return self.db.execute("PRAGMA journal_mode").fetchone()[0]

    # --- intents ------------------------------------------------------------------------

    def intents(self, include_deleted: bool = True) -> list[IntentRecord]:
        rows = self.db.execute("SELECT * FROM intent ORDER BY created").fetchall()
        return [_record(row) for row in rows if include_deleted or not row["deleted"]]

    def get(self, name: str) -> IntentRecord | None:
        row = self.db.execute("SELECT * FROM intent WHERE name = ?", (name,)).fetchone()
        return _record(row) if row else None

    def put_config(self, name: str, config: str, initial_state: str, reason: str) -> bool:
        """Store an intent's configuration; a new intent starts in `initial_state` with its
        first transition. Returns True when the intent is new."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT config, deleted FROM intent WHERE name = ?", (name,)).fetchone()
            if row is not None:
                self.db.execute("UPDATE intent SET config = ?, deleted = 0,"
                                " generation = generation + (config != ? OR deleted) WHERE name = ?",
                                (config, config, name))
                return False
            created = self.db.execute("SELECT COALESCE(MAX(created), 0) + 1 FROM intent").fetchone()[0]
            now = timestamp()
            self.db.execute("INSERT INTO intent (name, config, created, state, state_since, reason)"
                            " VALUES (?, ?, ?, ?, ?, ?)", (name, config, created, initial_state, now, reason))
            self.db.execute("INSERT INTO transition (intent, sequence, from_state, to_state, time, reason)"
                            " VALUES (?, 1, NULL, ?, ?, ?)", (name, initial_state, now, reason))
            return True

    def mark_deleted(self, name: str) -> None:
        self.db.execute("UPDATE intent SET deleted = 1 WHERE name = ?", (name,))

    def forget(self, name: str) -> None:
        """Drop a deleted intent, its history and its link claims."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM link_claim WHERE intent = ?", (name,))
            self.db.execute("DELETE FROM intent WHERE name = ?", (name,))
        self._claims.pop(name, None)

    def transition(self, name: str, to_state: str, reason: str) -> Transition:
        """Move an intent to `to_state`, recording the transition in its history. A transition
        that repeats one made since the intent last settled (same states, same reason: a loop
        such as failed -> compiling -> installing -> failed) is counted in that entry, whose
        time becomes the latest, instead of making the history grow with every round."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT state FROM intent WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KeyError(f"no intent {name!r}")
            now = timestamp()
            self.db.execute("UPDATE intent SET state = ?, state_since = ?, reason = ? WHERE name = ?",
                            (to_state, now, reason, name))
            repeated = self._repeated(name, row["state"], to_state, reason)
            if repeated is not None:
                self.db.execute("UPDATE transition SET count = count + 1, time = ? WHERE intent = ? AND sequence = ?",
                                (now, name, repeated["sequence"]))
                return Transition(repeated["sequence"], row["state"], to_state, now, reason, repeated["count"] + 1)
            sequence = self.db.execute("SELECT COALESCE(MAX(sequence), 0) + 1 FROM transition WHERE intent = ?",
                                       (name,)).fetchone()[0]
            self.db.execute("INSERT INTO transition (intent, sequence, from_state, to_state, time, reason)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            (name, sequence, row["state"], to_state, now, reason))
        return Transition(sequence, row["state"], to_state, now, reason)

    def _repeated(self, name: str, from_state: str, to_state: str, reason: str) -> sqlite3.Row | None:
        """The entry of the same transition since the intent last entered a settled state, if any."""
        since = self.db.execute(f"SELECT COALESCE(MAX(sequence), 0) FROM transition WHERE intent = ? AND to_state IN "
                                f"({', '.join('?' * len(SETTLED))})", (name, *SETTLED)).fetchone()[0]
        return self.db.execute("SELECT sequence, count FROM transition WHERE intent = ? AND sequence > ? AND "
                               "from_state = ? AND to_state = ? AND reason = ?",
                               (name, since, from_state, to_state, reason)).fetchone()

    def set_reason(self, name: str, reason: str) -> None:
        """Update why an intent is in its state, without a transition."""
        self.db.execute("UPDATE intent SET reason = ? WHERE name = ?", (reason, name))

    def history(self, name: str) -> list[Transition]:
        rows = self.db.execute("SELECT * FROM transition WHERE intent = ? ORDER BY sequence", (name,)).fetchall()
        return [Transition(r["sequence"], r["from_state"], r["to_state"], r["time"], r["reason"], r["count"])
                for r in rows]

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        self.db.execute("UPDATE intent SET status = ? WHERE name = ?", (json.dumps(status, sort_keys=True), name))

    # --- links created by the orchestrator ------------------------------------------------

    def record_link(self, link_id: str, spec: dict[str, Any], intent: str) -> None:
        """Remember, before asking for it, that a link is created for `intent`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT OR IGNORE INTO created_link VALUES (?, ?)", (link_id, json.dumps(spec, sort_keys=True)))
            self.db.execute("INSERT OR IGNORE INTO link_claim VALUES (?, ?)", (link_id, intent))
        self._created.add(link_id)
        self._claims.setdefault(intent, set()).add(link_id)

    def claim_links(self, intent: str, link_ids: set[str]) -> None:
        """The created links `intent` uses now: exactly `link_ids` (others it claimed are released).
        A claim that holds already costs no access to the database."""
        wanted = link_ids & self._created
        if self._claims.get(intent, set()) == wanted:
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM link_claim WHERE intent = ?", (intent,))
            self.db.executemany("INSERT INTO link_claim VALUES (?, ?)",
                                [(link_id, intent) for link_id in sorted(wanted)])
        if wanted:
            self._claims[intent] = set(wanted)
        else:
            self._claims.pop(intent, None)

    def created_links(self) -> dict[str, dict[str, Any]]:
        return {r["link_id"]: json.loads(r["spec"]) for r in self.db.execute("SELECT * FROM created_link")}

    def link_claims(self) -> dict[str, set[str]]:
        """Created link -> the intents that use it (empty set: nobody does)."""
        claims: dict[str, set[str]] = {link_id: set() for link_id in self._created}
        for intent, links in self._claims.items():
            for link_id in links:
                claims[link_id].add(intent)
        return claims

    def forget_link(self, link_id: str) -> None:
        self.db.execute("DELETE FROM created_link WHERE link_id = ?", (link_id,))  # its claims go with it
        self._created.discard(link_id)
        for intent in [i for i, links in self._claims.items() if link_id in links]:
            self._claims[intent].discard(link_id)
            if not self._claims[intent]:
                del self._claims[intent]


def _record(row: sqlite3.Row) -> IntentRecord:
    return IntentRecord(row["name"], row["config"], row["created"], bool(row["deleted"]), row["state"],
                        row["state_since"], row["reason"], json.loads(row["status"]), row["generation"])
