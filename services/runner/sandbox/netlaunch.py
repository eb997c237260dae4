"""`python -m services.runner.sandbox.netlaunch SLIRP4NETNS -- BWRAP ARGS...`: a bwrap sandbox with a network
namespace of its own and a user-mode route out (slirp4netns, host loopback disabled).

bwrap cannot connect a new network namespace to anything, and `--share-net` alone would hand the sandbox
the host's namespace with every loopback service of the runner (NATS, the model gateway, metrics). So a
new namespace is made first (`unshare --net`), slirp4netns gives it a tap device with NAT (10.0.2.0/24;
`--disable-host-loopback` refuses 10.0.2.2, the host's 127.0.0.1), and only then does bwrap start in it,
sharing that namespace (and nothing else) with the command. stdin/stdout pass straight through (MCP stdio);
fd 3 (bwrap's `--args`) is handed on. Standard library only: it runs before anything else is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys

ARGS_FD = 3


def _read_pid(fd: int) -> int:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            raise RuntimeError("the sandbox's network namespace was not made")
        data += chunk
    return int(data)


def _network(slirp: str, pid: int) -> tuple[subprocess.Popen[bytes], int]:
    """slirp4netns for `pid`'s namespace; returns it and the fd whose closing makes it exit."""
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    proc = subprocess.Popen(
        [slirp, "--configure", "--mtu=65520", "--disable-host-loopback", "--ready-fd", str(ready_w),
         "--exit-fd", str(exit_r), str(pid), "tap0"],
        pass_fds=(ready_w, exit_r), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(ready_w)
    os.close(exit_r)
    if os.read(ready_r, 1) != b"1":
        raise RuntimeError("slirp4netns did not configure the sandbox's network")
    os.close(ready_r)
    return proc, exit_w


def main(argv: list[str]) -> int:
    slirp, bwrap = argv[0], argv[2:]
    pid_r, pid_w = os.pipe()
    go_r, go_w = os.pipe()
    # The namespace is made first (unshare execs the shell in it, same pid), routed, and only then does
    # bwrap start in it with --share-net: bwrap's own loopback set-up would race slirp4netns's.
    hold = f'echo $$ >&{pid_w}; exec {pid_w}>&-; read go <&{go_r}; exec {go_r}<&-; exec "$@"'
    sandbox = subprocess.Popen(["unshare", "--net", "--", "/bin/sh", "-c", hold, "sh", *bwrap],
                               pass_fds=(pid_w, go_r, ARGS_FD))
    os.close(pid_w)
    os.close(go_r)
    slirp_proc: subprocess.Popen[bytes] | None = None
    try:
        slirp_proc, exit_w = _network(slirp, _read_pid(pid_r))
        os.write(go_w, b"go\n")
        os.close(go_w)
        code = sandbox.wait()
        os.close(exit_w)
    except BaseException:
        sandbox.kill()
        raise
    finally:
        if slirp_proc is not None:
            try:
                slirp_proc.wait(5)
            except subprocess.TimeoutExpired:
                slirp_proc.kill()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
