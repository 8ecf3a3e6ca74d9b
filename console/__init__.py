"""The operator's console: a web application on loopback that shows every level of a network
together, live, and acts on it as the user who logged in.

It is a level of its own: it imports the engine (`netconf_core`) and the model vocabulary
(`models`) only, and reaches every level over NETCONF as any client would, with the levels'
own users, so their access rules apply (the read-only user may look and not act, whatever
the page does). `tools/cmd_console.py` composes it from the file `qstrata up` writes.

- `levels.py`: where each level listens, how to log in to it, and the console's users;
- `views.py`: what the page is shown of each level, read with the `models` readers;
- `hub.py`: one watch per level (a DeviceLink subscribed to its notifications and a
  ReconcileLoop re-reading it), the event log, and the pages' streams (Server-Sent Events);
- `actions.py`: fault injection and intents, as NETCONF RPCs of the acting user;
- `server.py`: the aiohttp application (login, state, stream, actions, the built page).
"""
