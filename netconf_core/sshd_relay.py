"""The `netconf` subsystem that OpenSSH's sshd runs when our server sits behind it:

    Subsystem netconf /path/to/python -I -S /path/to/sshd_relay.py /path/to/server.sock

It hands the session over and gets out of the way: it connects to the server's Unix socket,
sends one header line naming the user sshd authenticated, with its stdin and stdout (the
pipes to sshd) attached (SCM_RIGHTS), and then waits. From then on the server reads and writes
those pipes itself, so no process copies the session's bytes in between. The server answers
one line, "ok" or "refused: why" (the server logs why; sshd forwards no subsystem's stderr,
so the client only sees its channel close, and the relay exits 1). After "ok" the relay lets go
of the pipes and exits when the server closes the hand-off connection (the session ended).

The user is $NETCONF_USER when sshd set it (authorized_keys `environment="NETCONF_USER=name"`
with `PermitUserEnvironment NETCONF_USER`: one service account, a NETCONF user per key), else
the account sshd logged in. Standard library only, and no site packages: it starts in a few
milliseconds.
"""
import json
import os
import pwd
import socket
import sys

HEADER_MAX = 4096  # bytes; the server refuses a longer header


def header() -> bytes:
    user = os.environ.get("NETCONF_USER") or pwd.getpwuid(os.getuid()).pw_name
    peer = (os.environ.get("SSH_CONNECTION") or "").split(" ")[0]
    return json.dumps({"user": user, "peer": peer}).encode() + b"\n"


def main(path: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
        try:
            control.connect(path)
            socket.send_fds(control, [header()], [0, 1])
        except OSError as err:
            print(f"netconf: the NETCONF server is not reachable: {err.strerror}", file=sys.stderr)
            return 1
        answer = _line(control)
        if answer != "ok":
            sys.stderr.write(f"netconf: {answer or 'the NETCONF server closed the connection'}\n")
            return 1
        # The server holds the pipes now: ours must not keep them open after it closes them.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        try:
            while control.recv(HEADER_MAX):
                pass
        except OSError:  # the server went away: the session is over
            pass
    return 0


def _line(control: socket.socket) -> str:
    data = b""
    try:
        while b"\n" not in data and len(data) < HEADER_MAX and (chunk := control.recv(HEADER_MAX)):
            data += chunk
    except OSError:
        pass
    return data.decode(errors="replace").strip()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: sshd_relay.py SOCKET")
    sys.exit(main(sys.argv[1]))
