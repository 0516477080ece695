"""virnucpro_store.lightning against stock Lightning (the oracle): fit, top-k, last, resume,
corrupt and unsafe checkpoints, async saves on a slow backend, failing targets."""

from __future__ import annotations

import os
import pathlib
import threading
import time
import uuid

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

import virnucpro_store as vs  # noqa: E402
from virnucpro_store.backends.memory import MemoryBackend  # noqa: E402
from virnucpro_store.lightning import (  # noqa: E402
    StoreCheckpointIO,
    StoreModelCheckpoint,
    latest_valid,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning",
                                        "ignore::DeprecationWarning")


class Tiny(pl.LightningModule):
    """Two linear layers, AdamW, 8 samples in batches of 4 (2 steps per epoch)."""

    def __init__(self, lr: float = 0.05, tag=None):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
        self.seen_at_start: dict = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def on_train_start(self):
        opt = self.trainer.optimizers[0]
        self.seen_at_start = {
            "epoch": self.trainer.current_epoch, "step": self.trainer.global_step,
            "exp_avg": [s["exp_avg"].clone() for s in opt.state.values()],
        }

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 4, generator=g)
        return torch.utils.data.DataLoader(list(zip(x, x.sum(1, keepdim=True))), batch_size=4)


def trainer(callback, *, max_epochs: int, plugins=None) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[callback], plugins=plugins,
                      accelerator="cpu", devices=1, num_sanity_val_steps=0)


def fit(callback, *, max_epochs: int, plugins=None, ckpt_path=None, model=None):
    torch.manual_seed(0)
    model = model or Tiny()
    t = trainer(callback, max_epochs=max_epochs, plugins=plugins)
    t.fit(model, ckpt_path=ckpt_path)
    return t, model


def names(store: vs.CheckpointStore) -> list[str]:
    return sorted(store.list())


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """Stock Lightning on local disk: the names it keeps, its optimizer state after 2 epochs
    and its weights after resuming to 3."""
    folder = tmp_path_factory.mktemp("stock")
    cb = ModelCheckpoint(dirpath=folder, monitor="train_loss", save_top_k=2, save_last=True)
    t, _ = fit(cb, max_epochs=2)
    kept = sorted(os.listdir(folder))
    exp_avg = [s["exp_avg"].clone() for s in t.optimizers[0].state.values()]
    cb2 = ModelCheckpoint(dirpath=folder, monitor="train_loss", save_top_k=2, save_last=True)
    _, resumed = fit(cb2, max_epochs=3, ckpt_path=str(folder / "last.ckpt"))
    return {"kept": kept, "exp_avg": exp_avg, "weights": resumed.state_dict(),
            "kept_after": sorted(os.listdir(folder))}


def _memory_url() -> tuple[str, dict]:
    return f"memory://lt-{uuid.uuid4().hex[:8]}/ckpts", {}


@pytest.fixture(params=["local", "memory", pytest.param("s3_seaweed", marks=pytest.mark.s3)])
def where(request, tmp_path):
    """(dirpath URL, storage options) on each backend."""
    if request.param == "local":
        return str(tmp_path / "ours"), {}
    if request.param == "memory":
        return _memory_url()
    server = request.getfixturevalue("seaweedfs")
    return server.fresh_url() + "/ckpts", server.storage_options()


def test_fit_top_k_last_and_resume_match_stock_lightning(where, oracle):
    import fsspec

    url, options = where
    memfs = fsspec.filesystem("memory")
    before = set(memfs.store)
    io = StoreCheckpointIO(**options)
    cb = StoreModelCheckpoint(dirpath=url, monitor="train_loss", save_top_k=2, save_last=True)
    t, _ = fit(cb, max_epochs=2, plugins=[io])
    store = vs.open_store(url, **options)
    assert names(store) == oracle["kept"]  # the same top-2 + last as stock Lightning
    for name in names(store):
        assert store.validate(name, level="load", deep=True).ok
    ckpt = latest_valid(url, **options)
    assert ckpt is not None and ckpt.endswith("/last.ckpt")

    cb2 = StoreModelCheckpoint(dirpath=url, monitor="train_loss", save_top_k=2, save_last=True)
    _, resumed = fit(cb2, max_epochs=3, plugins=[StoreCheckpointIO(**options)], ckpt_path=ckpt)
    seen = resumed.seen_at_start
    assert (seen["epoch"], seen["step"]) == (2, 4)  # continues at epoch 2, step 4
    for got, want in zip(seen["exp_avg"], oracle["exp_avg"], strict=True):
        torch.testing.assert_close(got, want)  # the optimizer state came back
    for k, v in oracle["weights"].items():
        torch.testing.assert_close(resumed.state_dict()[k], v)  # and training went on alike
    assert names(store) == oracle["kept_after"]
    assert isinstance(cb._fs, type(cb2._fs))  # the fsspec stand-in, never replaced
    assert set(memfs.store) == before  # nothing went through fsspec's memory filesystem


def test_best_k_yaml_and_last_link_go_through_the_store(tmp_path):
    url, _ = _memory_url()
    cb = StoreModelCheckpoint(dirpath=url, monitor="train_loss", save_top_k=1,
                              save_last="link")
    fit(cb, max_epochs=2, plugins=[StoreCheckpointIO()])
    store = vs.open_store(url)
    assert names(store) == ["epoch=1-step=4.ckpt", "last.ckpt"]
    assert store.read_bytes("last.ckpt") == store.read_bytes("epoch=1-step=4.ckpt")
    cb.to_yaml()
    import yaml

    assert yaml.safe_load(store.read_bytes("best_k_models.yaml")) == {
        f"{url}/epoch=1-step=4.ckpt": pytest.approx(cb.best_model_score.item())}
    # locally too a copy, not a symlink (the local backend never follows symlinks)
    folder = tmp_path / "local"
    cb = StoreModelCheckpoint(dirpath=folder, monitor="train_loss", save_top_k=1,
                              save_last="link")
    fit(cb, max_epochs=2, plugins=[StoreCheckpointIO()])
    assert not os.path.islink(folder / "last.ckpt")
    assert sorted(os.listdir(folder)) == ["epoch=1-step=4.ckpt", "last.ckpt"]
    assert latest_valid(folder) == str(folder / "last.ckpt")


def test_the_default_plugin_is_replaced_and_others_refused(tmp_path):
    url, _ = _memory_url()
    t, _ = fit(StoreModelCheckpoint(dirpath=url), max_epochs=1)
    assert isinstance(t.strategy.checkpoint_io, StoreCheckpointIO)
    assert names(vs.open_store(url)) == ["epoch=0-step=2.ckpt"]
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    with pytest.raises(TypeError, match="StoreCheckpointIO"):
        fit(StoreModelCheckpoint(dirpath=tmp_path / "c"), max_epochs=1,
            plugins=[AsyncCheckpointIO()])


def test_version_counter_and_guards_hold_on_every_backend():
    url, _ = _memory_url()
    store = vs.open_store(url)
    io = StoreCheckpointIO()
    # a file already there: the version counter sees it through the store
    io.save_checkpoint({"x": 1}, f"{url}/epoch=0-step=2.ckpt")
    cb = StoreModelCheckpoint(dirpath=url, save_top_k=1, every_n_epochs=1)
    fit(cb, max_epochs=1, plugins=[io])
    assert names(store) == ["epoch=0-step=2-v1.ckpt", "epoch=0-step=2.ckpt"]

    class FakeTrainer:
        ckpt_path = f"{url}/resumed.ckpt"

    assert not cb._should_remove_checkpoint(FakeTrainer(), f"{url}/resumed.ckpt", f"{url}/b")
    assert not cb._should_remove_checkpoint(FakeTrainer(), f"{url}x/a.ckpt", f"{url}/b")
    assert not cb._should_remove_checkpoint(FakeTrainer(), "memory://other/a.ckpt", f"{url}/b")
    assert cb._should_remove_checkpoint(FakeTrainer(), f"{url}/a.ckpt", f"{url}/b")
    # stock Lightning applies neither guard off local disk
    stock = ModelCheckpoint(dirpath=url, save_top_k=1)
    assert stock._should_remove_checkpoint(FakeTrainer(), f"{url}/resumed.ckpt", f"{url}/b")
    assert stock._should_remove_checkpoint(FakeTrainer(), "memory://other/a.ckpt", f"{url}/b")


def test_truncated_last_is_corrupted_and_latest_valid_falls_back(tmp_path):
    url, _ = _memory_url()
    cb = StoreModelCheckpoint(dirpath=url, monitor="train_loss", save_top_k=2, save_last=True)
    fit(cb, max_epochs=2, plugins=[StoreCheckpointIO()])
    store = vs.open_store(url)
    assert latest_valid(url) == f"{url}/last.ckpt"
    data = store.read_bytes("last.ckpt")
    store.save_bytes(data[: len(data) * 2 // 3], "last.ckpt", validate=None)
    io = StoreCheckpointIO()
    with pytest.raises(vs.CheckpointCorrupted):
        io.load_checkpoint(f"{url}/last.ckpt")
    with pytest.raises(vs.CheckpointCorrupted):  # and so does a resume from it
        fit(StoreModelCheckpoint(dirpath=url), max_epochs=3, plugins=[StoreCheckpointIO()],
            ckpt_path=f"{url}/last.ckpt")
    assert latest_valid(url) == f"{url}/epoch=1-step=4.ckpt"
    # local disk: modification times, too
    folder = tmp_path / "l"
    fit(StoreModelCheckpoint(dirpath=folder, monitor="train_loss", save_top_k=2,
                             save_last=True), max_epochs=2, plugins=[StoreCheckpointIO()])
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:1000])
    assert latest_valid(folder) == str(folder / "epoch=1-step=4.ckpt")
    assert latest_valid(tmp_path / "nowhere") is None


def test_latest_valid_orders_by_training_progress_then_publish_time():
    url, _ = _memory_url()
    store = vs.open_store(url)

    def put(name, **counters):
        store.save(counters, name, validate="load")

    put("epoch=1-step=5.ckpt", epoch=1, global_step=5)
    put("epoch=0-step=4.ckpt", epoch=0, global_step=4)
    # a kill between the top-k save of step 5 and last.ckpt's: last.ckpt (published later, a
    # name without a step) still holds step 4; the furthest progress wins, not the newest file
    put("last.ckpt", epoch=0, global_step=4)
    assert latest_valid(url) == f"{url}/epoch=1-step=5.ckpt"
    put("last.ckpt", epoch=1, global_step=5)  # one step, two files: the later publish
    assert latest_valid(url) == f"{url}/last.ckpt"
    put("weights.ckpt", w=torch.zeros(2))  # no counters: ranks below every Lightning file
    assert latest_valid(url) == f"{url}/last.ckpt"
    assert latest_valid(url, pattern="w*") == f"{url}/weights.ckpt"
    assert latest_valid(url, pattern="*.txt") is None


def test_a_path_hyperparameter_fails_at_save_and_publishes_nothing(tmp_path):
    url, _ = _memory_url()
    cb = StoreModelCheckpoint(dirpath=url, save_top_k=1)
    with pytest.raises(vs.UnsafeCheckpoint, match="PosixPath"):
        fit(cb, max_epochs=1, plugins=[StoreCheckpointIO()],
            model=Tiny(tag=pathlib.Path("/data/run1")))
    assert names(vs.open_store(url)) == []
    # stock Lightning saves it and fails only at resume, with torch's UnpicklingError
    stock = tmp_path / "stock"
    fit(ModelCheckpoint(dirpath=stock, save_top_k=1), max_epochs=1,
        model=Tiny(tag=pathlib.Path("/data/run1")))
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(next(stock.iterdir()), weights_only=True)
    # asynchronous: raised once, by the next call, and nothing is published
    io = StoreCheckpointIO(async_save=True)
    io.save_checkpoint({"p": pathlib.Path("/x")}, f"{url}/a.ckpt")
    with pytest.raises(vs.UnsafeCheckpoint):
        io.teardown()
    io.teardown()  # raised once, then cleared
    assert names(vs.open_store(url)) == []


def test_plugin_argument_checks(tmp_path):
    io = StoreCheckpointIO()
    path = str(tmp_path / "a.ckpt")
    with pytest.raises(TypeError, match="unknown storage_options.*'compress'"):
        io.save_checkpoint({"a": 1}, path, storage_options={"compress": True})
    io.save_checkpoint({"a": 1}, path, storage_options={"validate": "keys", "deep": True})
    with pytest.raises(vs.AlreadyExists):
        io.save_checkpoint({"a": 2}, path, storage_options={"overwrite": False})
    with pytest.raises(ValueError, match="weights_only=False"):
        io.load_checkpoint(path, weights_only=False)
    assert io.load_checkpoint(path, weights_only=True) == {"a": 1}
    with pytest.raises(ValueError):
        StoreCheckpointIO(validate="nonsense")
    # one store per folder, reused
    assert io.store_for(path)[0] is io.store_for(str(tmp_path / "b.ckpt"))[0]
    io.remove_checkpoint(path)
    io.remove_checkpoint(path)  # missing: not an error


def test_failing_targets_raise_storage_failure(tmp_path):
    # a read-only target: a folder where a file should be created (even root cannot write
    # into a regular file), and a full one: /dev/full answers every write with ENOSPC
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    for sync in (True, False):
        io = StoreCheckpointIO(async_save=not sync)
        with pytest.raises(vs.StorageFailure):
            io.save_checkpoint({"w": torch.zeros(3)}, str(blocker / "a.ckpt"))
            io.teardown()
    io = StoreCheckpointIO()
    with pytest.raises(vs.StorageFailure):
        fit(StoreModelCheckpoint(dirpath=blocker / "ckpts"), max_epochs=1, plugins=[io])
    # /proc is read-only for new files, for root too
    with pytest.raises(vs.StorageFailure):
        StoreCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, "/proc/vnps-test.ckpt")


class SlowMemory(MemoryBackend):
    """memory://, under a scheme fsspec does not know, whose publish takes DELAY seconds."""

    scheme = "vnpsslow"
    DELAY = 0.15

    def __init__(self, location: str, **options: object) -> None:
        super().__init__("vnpsslow-" + location, **options)
        self.url = f"vnpsslow://{location}"

    def stage(self, key):
        staging = super().stage(key)
        publish = staging.publish

        def slow_publish(**kwargs):
            time.sleep(self.DELAY)
            return publish(**kwargs)

        staging.publish = slow_publish
        return staging


@pytest.fixture
def slow_scheme():
    vs.register_backend("vnpsslow", f"{__name__}:SlowMemory")
    return f"vnpsslow://s{uuid.uuid4().hex[:8]}/ckpts"


def test_async_top1_on_slow_storage_keeps_exactly_one_and_never_zero(slow_scheme):
    import fsspec

    with pytest.raises(ValueError):  # fsspec has no such scheme: nothing may reach it
        fsspec.filesystem("vnpsslow")
    url = slow_scheme
    store = vs.open_store(url)
    counts: list[int] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            found = [k for k in store.list() if k.endswith(".ckpt")]
            counts.append(sum(store.validate(k, level="zip").ok for k in found))
            time.sleep(0.002)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        io = StoreCheckpointIO(async_save=True, max_pending=2)
        cb = StoreModelCheckpoint(dirpath=url, save_top_k=1, every_n_train_steps=1)
        fit(cb, max_epochs=3, plugins=[io])
    finally:
        stop.set()
        poller.join()
    assert names(store) == ["epoch=2-step=6.ckpt"]
    first = next(i for i, c in enumerate(counts) if c)
    assert min(counts[first:]) >= 1, "no valid checkpoint at some moment"
    assert max(counts) <= 3  # bounded: max_pending queued plus the one kept


def test_async_remove_waits_for_the_saves_ahead_and_failures_raise_once(slow_scheme):
    url = slow_scheme
    store = vs.open_store(url)
    io = StoreCheckpointIO(async_save=True, max_pending=2)
    started = time.perf_counter()
    io.save_checkpoint({"v": torch.ones(2)}, f"{url}/a.ckpt")
    # queued, not published: exists() says so without waiting (the version counter asks)
    assert io.exists(f"{url}/a.ckpt") and not store.exists("a.ckpt")
    assert not io.exists(f"{url}/z.ckpt")
    assert time.perf_counter() - started < SlowMemory.DELAY
    io.wait()
    io.save_checkpoint({"v": torch.ones(2)}, f"{url}/b.ckpt")
    io.remove_checkpoint(f"{url}/a.ckpt")
    assert names(store) == ["a.ckpt"]  # b is not published yet, so a stays
    io.wait()
    assert names(store) == ["b.ckpt"]
    # a failed save keeps the file its removal was queued for, and is raised once
    io.save_checkpoint({"p": pathlib.Path("/x")}, f"{url}/c.ckpt")
    io.remove_checkpoint(f"{url}/b.ckpt")
    time.sleep(2 * SlowMemory.DELAY + 0.2)
    with pytest.raises(vs.UnsafeCheckpoint):
        io.save_checkpoint({"v": torch.ones(2)}, f"{url}/d.ckpt")
    io.save_checkpoint({"v": torch.ones(2)}, f"{url}/d.ckpt")  # cleared: not raised again
    io.teardown()
    assert names(store) == ["b.ckpt", "d.ckpt"]
    assert io.load_checkpoint(f"{url}/d.ckpt")["v"].sum() == 2


def test_numpy_objects_load_through_the_store_but_not_stock_torch_load(tmp_path):
    import numpy as np

    io = StoreCheckpointIO()
    path = str(tmp_path / "np.ckpt")
    io.save_checkpoint({"score": np.float64(0.5), "ids": np.arange(3)}, path)
    loaded = io.load_checkpoint(path)
    assert loaded["score"] == 0.5 and loaded["ids"].tolist() == [0, 1, 2]
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
