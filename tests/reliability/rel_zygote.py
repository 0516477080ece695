"""A long-lived process that imports torch and the store once, then forks workers on demand.

Starting Python and importing torch costs about a second; a crash loop of a hundred SIGKILLs,
or eight racing writers, would spend most of its time there. The zygote pays it once: each
worker is an ``os.fork()`` of it (milliseconds), runs one task from :mod:`rel_workers`, and
reports events as JSON lines on the zygote's stdout. The test kills workers by pid.

    with Zygote() as zygote:
        [pid] = zygote.fork("save_loop", url=..., ...)
        zygote.wait_event(pid, "saved")
        zygote.kill(pid)

The zygote stays single-threaded and never opens a store, so forking it is safe.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def emit(**event: Any) -> None:
    """Report one event from a worker: one JSON line, one ``write`` (atomic below PIPE_BUF)."""
    event.setdefault("pid", os.getpid())
    line = (json.dumps(event, default=str)[:3800] + "\n").encode()
    os.write(1, line)


# -- the zygote process ------------------------------------------------------------------------

def _serve() -> None:
    import multiprocessing

    import rel_common  # noqa: F401
    import rel_workers
    import torch  # noqa: F401 -- imported once, here, for every worker

    import virnucpro_store  # noqa: F401

    ctx = multiprocessing.get_context("fork")
    children: set[int] = set()
    emit(op="ready")
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "fork":
            n = int(cmd.get("n", 1))
            barrier = ctx.Barrier(n) if n > 1 else None
            pids = []
            for index in range(n):
                sys.stdout.flush()
                pid = os.fork()
                if pid == 0:  # the worker
                    code = 0
                    try:
                        signal.signal(signal.SIGTERM, signal.SIG_DFL)
                        task = getattr(rel_workers, cmd["task"])
                        task(index=index, barrier=barrier, **cmd["args"])
                        emit(event="exit")
                    except BaseException as exc:  # reported; the test decides what it means
                        import traceback

                        emit(event="crash", error=f"{type(exc).__name__}: {exc}",
                             trace=traceback.format_exc()[-2000:])
                        code = 1
                    finally:
                        os._exit(code)
                children.add(pid)
                pids.append(pid)
            emit(op="forked", pids=pids)
        elif op == "wait":
            pid = int(cmd["pid"])
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            emit(op="waited", child=pid, status=status)
        elif op == "exit":
            break
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# -- the test's side ---------------------------------------------------------------------------

class Zygote:
    def __init__(self, *, env: dict[str, str] | None = None, start_timeout: float = 120) -> None:
        path = os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])
        full_env = dict(os.environ, PYTHONPATH=path, **(env or {}))
        full_env.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        full_env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=full_env, start_new_session=True)
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._events: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._reply("ready", start_timeout)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # a line a dying worker left half-written
            if "op" in event:
                self._replies.put(event)
            else:
                with self._cond:
                    self._events[int(event["pid"])].append(event)
                    self._cond.notify_all()
        self._replies.put({"op": "eof"})
        with self._cond:
            self._cond.notify_all()

    def _reply(self, op: str, timeout: float) -> dict[str, Any]:
        reply = self._replies.get(timeout=timeout)
        if reply["op"] != op:
            raise RuntimeError(f"zygote answered {reply} instead of {op!r}")
        return reply

    def _send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def fork(self, task: str, n: int = 1, **args: Any) -> list[int]:
        """Start ``n`` workers running ``rel_workers.<task>(index=i, barrier=b, **args)``;
        with ``n > 1`` they share one ``multiprocessing.Barrier``."""
        self._send(op="fork", task=task, n=n, args=args)
        return list(self._reply("forked", 60)["pids"])

    def events(self, pid: int) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._events[pid])

    def wait_event(self, pid: int, name: str, timeout: float = 120, after: int = 0
                   ) -> dict[str, Any]:
        """The first event ``name`` of ``pid`` past index ``after`` (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events[pid][after:]:
                    if event.get("event") == name:
                        return event
                    if event.get("event") == "crash":
                        raise RuntimeError(f"worker {pid} crashed: {event['error']}\n"
                                           f"{event.get('trace', '')}")
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"worker {pid}: no {name!r} event within {timeout}s; "
                                       f"events: {self._events[pid][-5:]}")
                self._cond.wait(min(left, 1.0))

    def kill(self, pid: int) -> int:
        """SIGKILL one worker and reap it; returns its wait status."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.wait(pid)

    def wait(self, pid: int, timeout: float = 600) -> int:
        self._send(op="wait", pid=pid)
        return int(self._reply("waited", timeout)["status"])

    def close(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            try:
                self._send(op="exit")
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _serve()
