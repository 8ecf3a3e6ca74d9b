"""The operator's console over a stack's levels: its LevelAccess and users from the rows of a
stack (tools.stack.Level, or the stack file's dicts), for `qstrata console`, `up` and `demo`."""
from __future__ import annotations


def console_levels(rows: list, known_hosts: str | None = None) -> list:
    """The console's LevelAccess of each row of a stack (tools.stack.Level, or the dicts of the
    stack file): the read-write and read-only accounts, the host key pinned."""
    from console.levels import READ_ONLY, READ_WRITE, LevelAccess

    out = []
    for row in rows:
        get = row.get if isinstance(row, dict) else lambda key, row=row: getattr(row, key)
        out.append(LevelAccess(get("level"), get("name"), get("host"), int(get("port")),
                               {READ_WRITE: tuple(get("read_write")), READ_ONLY: tuple(get("read_only"))},
                               host_key=None if known_hosts else get("host_key"), known_hosts=known_hosts))
    return out


def console_users(rows: list) -> dict:
    """The console's users: the levels' read-write and read-only users, with their passwords."""
    from console.levels import READ_ONLY, READ_WRITE, ConsoleUser

    row = rows[-1]
    get = row.get if isinstance(row, dict) else lambda key: getattr(row, key)
    (writer, writer_password), (reader, reader_password) = get("read_write"), get("read_only")
    return {writer: ConsoleUser(writer, writer_password, READ_WRITE),
            reader: ConsoleUser(reader, reader_password, READ_ONLY)}


def start_line(console, users: dict) -> str:
    from console.levels import READ_ONLY, READ_WRITE

    who = ", ".join(f"{u.name} ({'acts' if u.role == READ_WRITE else 'looks only'})" for u in users.values()
                    if u.role in (READ_WRITE, READ_ONLY))
    return f"console: {console.url} (log in as {who}, with the passwords above)"


async def start_console(rows: list, title: str, port: int = 0, say=print, state_dir=None):
    """A started ConsoleServer over `rows`, its address said; None (saying why) when it cannot
    listen: the stack runs on without it. `state_dir`: where it keeps the layout (None: in memory)."""
    from console.server import ConsoleServer

    users = console_users(rows)
    console = ConsoleServer(console_levels(rows), users, port=port, title=title, state_dir=state_dir)
    try:
        await console.start()
    except OSError as error:
        say(f"no console: cannot listen on 127.0.0.1:{port}: {error.strerror}")
        await console.stop()
        return None
    say(start_line(console, users))
    return console
