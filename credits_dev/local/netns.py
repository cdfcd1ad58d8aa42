"""Run DynamoDB Local where nothing but this machine's user can reach it (stdlib only, run as a script).

DynamoDB Local has no bind-address option: it listens on every interface of its port. The local stack runs
it through ``unshare -rn`` (a user + network namespace whose only interface is its own loopback) with this
script as the namespace's first process:

    unshare -rn python netns.py <unix socket> <port> -- java ... -port <port> ...

It brings the namespace's loopback up, starts the command, and relays every connection made to the Unix
socket (created 0600, in the stack's private state directory) to ``127.0.0.1:<port>`` inside the namespace.
It exits with the command's exit status; the stack stops both by signalling their process group.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def die_with_parent() -> None:  # pragma: no cover - runs between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def pump(source: socket.socket, target: socket.socket) -> None:
    """Copy until end of stream, then pass the end on (half-close), so HTTP keep-alive works both ways."""
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def relay(client: socket.socket, connect: tuple[str, int] | str, family: int) -> None:
    upstream = socket.socket(family, socket.SOCK_STREAM)
    try:
        upstream.connect(connect)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def serve(listener: socket.socket, connect: tuple[str, int] | str, family: int) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=relay, args=(client, connect, family), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: netns.py <unix socket> <port> -- <command...>", file=sys.stderr)
        return 2
    path, port, command = argv[0], int(argv[1]), argv[3:]
    loopback_up()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file: owner read/write only
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(64)
    threading.Thread(target=serve, args=(listener, ("127.0.0.1", port), socket.AF_INET), daemon=True).start()
    while process.poll() is None:
        time.sleep(0.2)
    listener.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return process.returncode or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
