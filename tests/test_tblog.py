"""TensorBoard: every metrics.csv row is read back from the event files, once per epoch even across a resume,
with the run's config as hparams; without tensorboard nothing is written and nothing fails."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from gru_bench.config import CONFIGS_DIR, load_config
from gru_bench.training import tblog, trainer
from gru_bench.training.trainer import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

TINY = ["model.hidden=8", "training.batch_size=64", "training.max_epochs=4", "training.patience=null"]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tags_follow_the_columns() -> None:
    assert [tblog.tag(c) for c in ("train_nll", "valid_nll_seq", "test_nll", "lr", "grad_norm")] == [
        "nll/train",
        "nll/valid_seq",
        "nll/test",
        "lr",
        "grad_norm",
    ]
    assert tblog.flat_hparams({"dataset": "jsb", "model": {"hidden": None, "cell": "gru"}}) == {
        "dataset": "jsb",
        "model.hidden": "null",
        "model.cell": "gru",
    }


def test_only_finite_numbers_are_logged_and_a_restart_purges(tmp_path: Path) -> None:
    row = {"epoch": 1, "train_nll": 9.0, "valid_nll": 8.5, "test_nll": None, "valid_nll_seq": math.nan}
    for epoch in (1, 2, 3):
        tblog.log_epoch(tmp_path, row | {"epoch": epoch, "train_nll": 9.0 - epoch}, {"dataset": "jsb"})
    tblog.close(tmp_path)
    for epoch in (2, 3):  # a new process restarts at epoch 2: the old 2 and 3 are gone
        tblog.log_epoch(tmp_path, row | {"epoch": epoch, "train_nll": 0.5 * epoch}, {"dataset": "jsb"})
    tblog.close(tmp_path)
    got = scalars(tmp_path)
    assert set(got) == {"nll/train", "nll/valid"}
    assert got["nll/train"] == [(1, 8.0), (2, 1.0), (3, 1.5)]


def test_a_resumed_run_logs_every_epoch_once_with_its_config(
    tmp_path: Path, jsb_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(CONFIGS_DIR / "jsb" / "gru.yaml", TINY)
    run = tmp_path / "run"
    real_save = trainer.save_checkpoint

    def crash_before_checkpoint_3(path: Path, obj: dict) -> None:
        if path.name == "last.pt" and obj["run"]["epoch"] == 3:
            raise KeyboardInterrupt  # epoch 3 is in TensorBoard, not in the checkpoint
        real_save(path, obj)

    monkeypatch.setattr(trainer, "save_checkpoint", crash_before_checkpoint_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, quiet=True)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    train(cfg, run, resume=True, quiet=True)

    metrics = pd.read_csv(run / "metrics.csv")
    got = scalars(run)
    assert {"nll/train", "nll/valid", "lr", "grad_norm", "seconds", "updates"} <= set(got)
    for column in ("train_nll", "valid_nll", "lr", "grad_norm", "seconds"):
        steps, values = zip(*got[tblog.tag(column)], strict=True)
        assert list(steps) == [1, 2, 3, 4]
        assert values == pytest.approx(list(metrics[column]), rel=1e-6)

    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["model.cell"].string_value == "gru" and hparams["model.hidden"].number_value == 8


def test_without_tensorboard_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    assert not tblog.available()
    tblog.log_epoch(tmp_path, {"epoch": 1, "train_nll": 1.0}, {})
    tblog.close(tmp_path)
    assert list(tmp_path.iterdir()) == []
