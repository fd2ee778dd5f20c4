"""A private local Ray dies with its driver, however the driver dies.

Ray fate-shares its GCS and raylet with the driver that started them, but after a SIGKILL of the
driver alone (what the OOM killer does) its dashboard and runtime-env agents notice the raylet's
death and then hang for a minute trying to report it to the dead GCS; and nothing removes the
session's temporary folder. So the driver starts this small watcher (no Ray import, its own
session so Ctrl-C in the terminal does not reach it) and keeps the write end of a pipe: the
kernel closes it when the driver exits for any reason, the watcher reads EOF, terminates every
process that carries this run's private Ray temp folder in its environment (``RAY_TMPDIR``, set
by ``mad.remote`` before Ray starts and inherited by every Ray process) and removes that folder.

``python -m mad.reaper FD TEMP_ROOT``
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

_GRACE_S = 3.0  # for SIGTERM
_KILL_S = 5.0  # for SIGKILL, processes found later included


def start(temp_root: str) -> int:
    """Start the watcher for ``temp_root``; returns the pipe's write end, to hold until exit."""
    read_fd, write_fd = os.pipe()  # not inheritable: Ray's processes do not keep the driver's end
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    subprocess.Popen([sys.executable, "-m", "mad.reaper", str(read_fd), temp_root], pass_fds=(read_fd,),
                     env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
    os.close(read_fd)
    return write_fd


def session_processes(temp_root: str) -> list[int]:
    """PIDs of the processes whose environment says RAY_TMPDIR=temp_root (this run's Ray).

    Only the environment: a process that merely has a file open in the folder may be anyone's (a
    shell ``cd``-ed into it, an ``rm -r`` or ``du`` of it), and is not this watcher's to end."""
    tag = f"RAY_TMPDIR={temp_root}".encode()
    me = os.getpid()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if tag in f.read().split(b"\0"):
                    pids.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return pids


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def reap(temp_root: str) -> None:
    """Terminate this run's Ray processes (SIGTERM, then SIGKILL after a grace period, then SIGKILL
    again for any found later, such as a process started while the others stopped) and remove the
    folder."""
    pids = session_processes(temp_root)
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + _GRACE_S
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = session_processes(temp_root)
    deadline = time.monotonic() + _KILL_S
    while pids and time.monotonic() < deadline:
        _signal(pids, signal.SIGKILL)
        time.sleep(0.05)
        pids = session_processes(temp_root)
    shutil.rmtree(temp_root, ignore_errors=True)


def main(argv: list[str]) -> int:
    fd, temp_root = int(argv[0]), argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:  # blocks until the driver, the only holder of the write end, is gone
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:
            continue
    reap(temp_root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
