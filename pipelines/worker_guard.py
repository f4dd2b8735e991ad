"""Local Beam worker processes never outlive their job.

With `--workers N` Beam's local runner starts N SDK worker processes and stops them when the
pipeline ends. When the job's main process is killed (`kill -9`, an out-of-memory kill, a closed
terminal) nobody stops them, and they keep running with their memory. `guard()` starts one small
watcher process per job: it keeps a list of the job's descendant processes and, when the job's
main process dies without saying goodbye, ends them (SIGTERM, then SIGKILL). A job that ends
normally says goodbye at exit and the watcher leaves quietly.

Linux only (it reads /proc); elsewhere `guard()` does nothing.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.25
_watcher: subprocess.Popen | None = None


def guard() -> None:
    """Start the watcher for this process (once; later calls do nothing)."""
    global _watcher
    if _watcher is not None or not Path("/proc/self/stat").exists():
        return
    _watcher = subprocess.Popen(
        [sys.executable, "-m", "pipelines.worker_guard", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,
    )  # a Ctrl-C to the job's group must not stop it
    atexit.register(_goodbye)


def _goodbye() -> None:
    if _watcher is not None and _watcher.stdin is not None and _watcher.poll() is None:
        try:
            _watcher.stdin.write(b"x")
            _watcher.stdin.close()
        except OSError:
            pass


# -- the watcher -------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    return int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of `root` with its start time (to tell a reused pid apart)."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                parents.setdefault(st[0], []).append((int(entry.name), st[1]))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, start in parents.get(todo.pop(), []):
            if pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def _end(known: dict[int, str]) -> None:
    def alive() -> list[int]:
        return [pid for pid, start in known.items() if (st := _stat(pid)) is not None and st[1] == start]

    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while wait and time.time() < deadline and alive():
            time.sleep(0.1)


def watch(job: int) -> None:
    known: dict[int, str] = {}
    me = os.getpid()
    while True:
        ready, _, _ = select.select([sys.stdin.buffer], [], [], POLL_S)
        if ready:
            said = os.read(sys.stdin.fileno(), 1)
            if said:  # goodbye: the job ended normally and stopped its own workers
                return
            break  # end of file: the job died
        known.update({p: s for p, s in descendants(job).items() if p != me})
    known.pop(me, None)
    _end(known)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))
