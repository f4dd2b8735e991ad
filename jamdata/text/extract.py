"""HTML main-text extraction with a per-document time limit.

trafilatura can spin for minutes on adversarial pages (deeply nested markup, huge flat trees), and
one such page would hold a whole Beam worker. A time limit must really stop the work, in whatever
thread Beam runs the DoFn in, so:

- Python threads cannot be killed and `signal.setitimer` works only in a process's main thread
  (Beam runs DoFns in worker threads), so neither bounds time inside the worker itself.
- Extraction therefore runs in a small child process (`python -m jamdata.text.extract`), one per
  worker thread, kept alive across documents. The parent waits for each answer with a deadline
  and, past it, kills the child (SIGKILL: stops C code too) and starts a fresh one for the next
  document. The child also arms `signal.setitimer` around each extraction (it *is* its process's
  main thread), so a runaway page usually ends with a clean "timeout" answer and no restart.
- A child that dies (out of memory, crash) costs that document only: it is an extraction failure.

`ExtractionTimeout` is what the WARC reader turns into an `extraction_timeout` reject. With no
limit (`timeout_s` 0 or None) extraction runs in-process, as before.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time

STARTUP_TIMEOUT_S = 120.0  # importing trafilatura in a fresh child on a busy machine


class ExtractionTimeout(Exception):
    """Extracting one page took longer than the limit."""


def extract_in_process(html: str, url: str | None = None) -> str | None:
    import trafilatura

    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    return trafilatura.extract(
        html, url=url, include_comments=False, include_tables=False, deduplicate=False, favor_precision=False
    )


# -- framing: 4-byte big-endian length + UTF-8 JSON ---------------------------------------------
def _send(f, obj: dict) -> None:
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    f.write(struct.pack(">I", len(data)) + data)
    f.flush()


def _recv_blocking(f) -> dict | None:
    head = f.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(f.read(n).decode("utf-8", "surrogatepass"))


class _Child:
    """One extraction child process and its pipes."""

    def __init__(self):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jamdata.text.extract"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.buf = b""
        if self._recv(time.monotonic() + STARTUP_TIMEOUT_S) != {"ready": True}:
            self.kill()
            raise RuntimeError("the extraction process did not start")

    def _recv(self, deadline: float) -> dict | None:
        """One framed answer; None past `deadline`; {"eof": True} when the child closed its end."""
        fd = self.proc.stdout.fileno()
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    data, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    return json.loads(data.decode("utf-8", "surrogatepass"))
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return {"eof": True}
            self.buf += chunk

    def ask(self, html: str, url: str | None, timeout_s: float) -> dict | None:
        _send(self.proc.stdin, {"html": html, "url": url, "timeout_s": timeout_s})
        # the child's own timer fires at timeout_s; the kill backstop a little later
        return self._recv(time.monotonic() + timeout_s * 1.5 + 1.0)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:
            pass


class Extractor:
    """Extraction with a deadline in a reusable child process (one per thread that uses it)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = float(timeout_s)
        self.child: _Child | None = None
        self.restarts = 0

    def extract(self, html: str, url: str | None = None) -> str | None:
        if self.child is None or self.child.proc.poll() is not None:
            self.child = _Child()
        try:
            answer = self.child.ask(html, url, self.timeout_s)
        except (BrokenPipeError, OSError) as e:
            answer = {"error": f"extraction process failed: {type(e).__name__}: {e}"}
        if answer is None or answer.get("eof"):  # the child is stopped; a fresh one comes next
            try:
                code = self.child.proc.wait(timeout=5) if answer else None
            except subprocess.TimeoutExpired:
                code = "unknown"
            self.close()
            self.restarts += 1
            if answer:  # it ended by itself (out of memory, a crash): a failure, not a timeout
                raise RuntimeError(f"extraction process died (exit code {code})")
            raise ExtractionTimeout(f"more than {self.timeout_s:g} s")
        if answer.get("timeout"):
            raise ExtractionTimeout(f"more than {self.timeout_s:g} s")
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer.get("text")

    def close(self) -> None:
        if self.child is not None:
            self.child.kill()
            self.child = None


_local = threading.local()
_all: list[Extractor] = []
_lock = threading.Lock()


def extract_main_text(html: str, url: str | None = None, timeout_s: float | None = None) -> str | None:
    """Main text of an HTML page; raises ExtractionTimeout past `timeout_s` seconds (None/0: no
    limit, in-process)."""
    if not timeout_s or timeout_s <= 0:
        return extract_in_process(html, url)
    ex = getattr(_local, "extractor", None)
    if ex is None or ex.timeout_s != float(timeout_s):
        if ex is not None:
            ex.close()
        ex = _local.extractor = Extractor(timeout_s)
        with _lock:
            _all.append(ex)
    return ex.extract(html, url)


@atexit.register
def _close_all() -> None:
    with _lock:
        for ex in _all:
            ex.close()


# -- the child ------------------------------------------------------------------------------------
class _Alarm(BaseException):
    """Raised by the child's own timer (BaseException: trafilatura's `except Exception` blocks
    must not swallow it)."""


def _on_alarm(signum, frame):
    raise _Alarm()


def serve(stdin=None, stdout=None) -> None:
    """The child loop: read a request, extract under a timer, answer; exit at end of input (the
    parent went away)."""
    stdin, stdout = stdin or sys.stdin.buffer, stdout or sys.stdout.buffer
    import trafilatura  # noqa: F401  (imported before "ready": startup is not charged to a page)

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; the child ends at EOF
    _send(stdout, {"ready": True})
    while True:
        req = _recv_blocking(stdin)
        if req is None:
            return
        try:
            signal.setitimer(signal.ITIMER_REAL, float(req["timeout_s"]))
            try:
                answer: dict[str, object] = {"text": extract_in_process(req["html"], req.get("url"))}
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Alarm:
            answer = {"timeout": True}
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"[:500]}
        _send(stdout, answer)


if __name__ == "__main__":
    serve()
