"""`python -m services.runner.executors.loopback <socket> <port> <argv...>`, inside a sandbox.

A sandbox without network still has its own `lo`. This listens on 127.0.0.1:<port> there, forwards
each connection to the runner's unix socket (bind-mounted in; the runner forwards it to the model
gateway on the same port), and runs argv as its child, exiting with its status. So the CLI calls
`http://127.0.0.1:<port>/...` as it would outside. Standard library only.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(listener: socket.socket, socket_path: str) -> None:
    while True:
        conn, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX)
        try:
            upstream.connect(socket_path)
        except OSError:
            conn.close()
            continue
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> int:
    socket_path, port, command = argv[0], int(argv[1]), argv[2:]
    listener = socket.create_server(("127.0.0.1", port))
    threading.Thread(target=_serve, args=(listener, socket_path), daemon=True).start()
    child = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
