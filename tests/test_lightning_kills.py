"""SIGKILL a Lightning run that saves through StoreCheckpointIO/StoreModelCheckpoint (top-1 +
last, a save every step), resume it with latest_valid, again and again: no checkpoint may ever
be corrupt, and none of the acknowledged training state may be lost.

CI: 3 kills locally, 2 on SeaweedFS. ``VNPS_KILLS=N`` sets both counts; ``VNPS_RELIABILITY=full``
runs 100 local and 30 SeaweedFS kills. The workers are forked from one server process that
imported torch and Lightning once (this file, run as a script), so a kill costs ~0.5 s.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

# imported here, in the test process, once (test_lightning.py shares it in a full run)
pytest.importorskip("lightning.pytorch")

FULL = os.environ.get("VNPS_RELIABILITY", "").strip().lower() == "full"


def _kills(full: int, ci: int) -> int:
    if os.environ.get("VNPS_KILLS"):
        return int(os.environ["VNPS_KILLS"])
    return full if FULL else ci


# -- the worker side (this file run as a script) -----------------------------------------------

def _emit(**event: Any) -> None:
    event.setdefault("pid", os.getpid())
    os.write(1, (json.dumps(event) + "\n").encode())


def _train_until_killed(url: str, options: dict[str, Any], bulk: int) -> None:
    import lightning.pytorch as pl
    import torch

    from virnucpro_store.lightning import StoreCheckpointIO, StoreModelCheckpoint, latest_valid

    class Acking(StoreCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            _emit(event="saving", path=str(path), step=checkpoint["global_step"])
            super().save_checkpoint(checkpoint, path, storage_options)
            _emit(event="saved", path=str(path), step=checkpoint["global_step"])

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(64, 1)
            # weights-like state (4 MB locally), so a kill often lands inside a save
            self.register_buffer("bulk", torch.randn(bulk))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

        def train_dataloader(self):
            x = torch.randn(16, 64)
            return torch.utils.data.DataLoader(list(zip(x, x.sum(1, keepdim=True))),
                                               batch_size=4)

    ckpt = latest_valid(url, **options)
    _emit(event="resume", ckpt=ckpt)
    callback = StoreModelCheckpoint(dirpath=url, save_top_k=1, save_last=True,
                                    every_n_train_steps=1)
    trainer = pl.Trainer(max_epochs=10**6, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback],
                         plugins=[Acking(**options)], accelerator="cpu", devices=1)
    trainer.fit(Model(), ckpt_path=ckpt)


def _serve() -> None:
    """Import everything once, then fork one training worker per line read (its JSON
    arguments)."""
    import warnings

    import lightning.pytorch  # noqa: F401
    import torch  # noqa: F401

    import virnucpro_store.lightning  # noqa: F401

    warnings.simplefilter("ignore")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    _emit(event="ready")
    for line in sys.stdin:
        args = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _train_until_killed(**args)
            except BaseException as exc:  # noqa: BLE001 -- reported to the test
                _emit(event="crash", error=f"{type(exc).__name__}: {exc}")
                code = 1
            finally:
                os._exit(code)


# -- the test side -----------------------------------------------------------------------------

class Server:
    def __init__(self) -> None:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.next(timeout=120)["event"] == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(b"{"):  # Lightning prints its own lines on stdout too
                self.events.put(json.loads(line))

    def next(self, timeout: float = 60) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def next_of(self, pid: int, timeout: float = 120) -> dict[str, Any]:
        while True:
            event = self.next(timeout)
            if event["pid"] == pid:
                return event

    def start_worker(self, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(args).encode() + b"\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _crash_loop(server: Server, url: str, options: dict[str, Any], kills: int, seed: int,
                bulk: int, settle: float = 0.0) -> dict[str, Any]:
    import virnucpro_store as vs
    from virnucpro_store.lightning import latest_valid

    store = vs.open_store(url, **options)
    rng = random.Random(seed)
    began = time.perf_counter()
    checked: dict[tuple[Any, ...], int] = {}  # file version -> its global_step
    acked_max = -1  # the newest training step whose checkpoint save returned
    tally = {"kills": 0, "mid_save": 0, "saves_acked": 0, "corrupt": 0, "lost": 0}
    try:
        for _ in range(kills):
            server.start_worker(url=url, options=options, bulk=bulk)
            event = server.next(timeout=120)
            while event["event"] != "resume":  # late lines of a worker killed before
                event = server.next(timeout=120)
            events, pid = [event], event["pid"]
            # kill at a random moment after the resumed run's first acknowledged save,
            # within about two more saves (their length measured on this medium)
            while events[-1]["event"] != "saved":
                events.append(server.next_of(pid))
                assert events[-1]["event"] != "crash", events[-1]
                if events[-1]["event"] == "saving":
                    started = time.perf_counter()
            took = time.perf_counter() - started
            time.sleep(rng.uniform(0.0, 2.5 * took))
            os.kill(pid, signal.SIGKILL)
            tally["kills"] += 1
            time.sleep(0.05 + settle)
            while not server.events.empty():
                event = server.next()
                if event["pid"] == pid:
                    events.append(event)
            assert not [e for e in events if e["event"] == "crash"], events
            acked = [e["step"] for e in events if e["event"] == "saved"]
            tally["saves_acked"] += len(acked)
            tally["mid_save"] += events[-1]["event"] == "saving"
            acked_max = max([acked_max, *acked])
            # every checkpoint there validates deep and loads; the newest acknowledged
            # state is in one of them, and latest_valid picks the newest of them
            # (a kill between a top-k save and its removal leaves the older file behind, as
            # with stock Lightning: files pile up, so each version is checked once)
            steps = {}
            for info in store.list_info():
                if not info.key.endswith(".ckpt"):
                    continue
                version = (info.key, info.size, info.modified, info.etag)
                if version not in checked:
                    report = store.validate(info.key, level="load", deep=True)
                    if not report.ok:
                        tally["corrupt"] += 1
                        continue
                    checked[version] = store.load(info.key)["global_step"]
                steps[info.key] = checked[version]
            if acked_max >= 0 and max(steps.values(), default=-1) < acked_max:
                tally["lost"] += 1
            newest = latest_valid(url, **options)
            if steps:
                assert newest is not None
                assert steps[newest.rsplit("/", 1)[-1]] == max(steps.values())
    finally:
        store.close()
    assert tally["corrupt"] == 0 and tally["lost"] == 0, tally
    tally["seconds"] = round(time.perf_counter() - began, 1)
    assert acked_max > 0, f"no save ever returned: {tally}"
    return tally


@pytest.fixture(scope="module")
def server():
    s = Server()
    try:
        yield s
    finally:
        s.close()


@pytest.mark.timeout(3600 if FULL or os.environ.get("VNPS_KILLS") else 300)
def test_sigkill_during_lightning_saves_local(server, tmp_path):
    tally = _crash_loop(server, str(tmp_path / "ckpts"), {}, _kills(100, 3), seed=5,
                        bulk=1 << 20)
    print(f"local: {tally}")


@pytest.mark.s3
@pytest.mark.timeout(3600 if FULL or os.environ.get("VNPS_KILLS") else 300)
def test_sigkill_during_lightning_saves_seaweedfs(server, seaweedfs):
    tally = _crash_loop(server, seaweedfs.fresh_url() + "/ckpts",
                        seaweedfs.storage_options(), _kills(30, 2), seed=6, bulk=1 << 18,
                        settle=0.3)
    print(f"seaweedfs: {tally}")


if __name__ == "__main__":
    _serve()
