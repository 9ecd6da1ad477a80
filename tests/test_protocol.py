"""The authors' protocol as config switches (loss sum/mean, RMS floor, unclipped velocity, noise on W and U),
the eval schedule, and successive-halving pruning of search trials."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gru_bench.config import CONFIGS_DIR, load_config
from gru_bench.errors import UserError
from gru_bench.experiments.search import Halving, SuccessiveHalving
from gru_bench.models.optim import StackedRMSProp
from gru_bench.training import trainer as training
from gru_bench.training.trainer import train

CONFIG = CONFIGS_DIR / "jsb" / "gru.yaml"
TINY = ["model.hidden=6", "training.max_epochs=3", "training.batch_size=16", "training.patience=null"]


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(
        CONFIGS_DIR / "jsb" / "gru.yaml", [*TINY, f"run.out_dir={tmp_path / 'runs'}", *overrides]
    )


def authors_rmsprop(params, grads, state, lr, momentum=0.9, avg=0.95, stabilizer=1e-2, clip=1.0):
    """A line-by-line transcription, in float64 numpy, of RMSPropMomentum.get_updates in the authors' code
    (jych/librnn pylearn2/training_algorithms/learning_rule.py) with momentum_clipping=clip, bound_inc=False,
    use_first_order=False. Returns the new params and the clipping factor; `state` holds avg_grad_sqr and
    velocity per param."""
    new_velocity = {}
    for name, g in grads.items():
        new_avg_grad_sqr = avg * state["n"][name] + (1 - avg) * g**2
        rms_grad_t = np.maximum(np.sqrt(new_avg_grad_sqr), stabilizer)
        new_velocity[name] = momentum * state["v"][name] - lr * (g / rms_grad_t)
        state["n"][name] = new_avg_grad_sqr
    new_mom_norm = np.sqrt(sum((v**2).sum() for v in new_velocity.values()))
    scale = clip / max(clip, new_mom_norm)
    out = {}
    for name in grads:
        state["v"][name] = new_velocity[name]  # the velocity is stored unclipped ...
        out[name] = params[name] + new_velocity[name] * scale  # ... only the applied step is clipped
    return out, scale


@pytest.mark.parametrize("fast", [False, True])
def test_the_authors_switches_reproduce_their_update_rule(fast: bool):
    if fast:
        pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    shapes = {"W": (1, 6, 4), "U": (1, 4, 4)}
    ps = {
        n: torch.nn.Parameter(torch.from_numpy(rng.normal(size=s).astype(np.float32)))
        for n, s in shapes.items()
    }
    opt = StackedRMSProp(
        list(ps.values()), [0.9], [0.95], [0.0], "update", [1.0], floor=[1e-2], clip_velocity=False, fast=fast
    )
    want = {n: p.detach().double().numpy()[0] for n, p in ps.items()}
    state = {
        "n": {n: np.zeros_like(w) for n, w in want.items()},
        "v": {n: np.zeros_like(w) for n, w in want.items()},
    }
    clipped = 0
    for step in range(6):
        # tiny gradients hit the 1e-2 floor, large ones the clipping
        size = 1e-4 if step < 2 else 30.0
        grads = {n: (rng.normal(size=s) * size).astype(np.float32) for n, s in shapes.items()}
        for n, p in ps.items():
            p.grad = torch.from_numpy(grads[n].copy())
        opt.step([0.1], [True])
        g64 = {n: g[0].astype(np.float64) for n, g in grads.items()}
        want, scale = authors_rmsprop(want, g64, state, 0.1)
        clipped += scale < 1
        for n, p in ps.items():
            np.testing.assert_allclose(p.detach().numpy()[0], want[n], rtol=1e-5, atol=1e-6)
        for got_v, n in zip(opt.v, shapes, strict=True):  # the velocity kept is the unclipped one
            np.testing.assert_allclose(got_v.numpy()[0], state["v"][n], rtol=1e-5, atol=1e-6)
    assert clipped >= 1  # the clipping branch was exercised


def test_default_velocity_is_the_clipped_step_and_differs_from_the_authors():
    rng = np.random.default_rng(1)
    g = torch.from_numpy((rng.normal(size=(1, 50)) * 10).astype(np.float32))
    vs = []
    for keep in (True, False):
        p = torch.nn.Parameter(torch.zeros(1, 50))
        opt = StackedRMSProp([p], [0.9], [0.95], [1e-6], "update", [0.1], clip_velocity=keep)
        p.grad = g.clone()
        opt.step([1.0], [True])
        assert p.detach().norm().item() == pytest.approx(0.1, rel=1e-5)  # the applied step is clipped in both
        vs.append(opt.v[0].norm().item())
    assert vs[0] == pytest.approx(0.1, rel=1e-5) and vs[1] > 1.0


def test_rms_switches_are_validated(tmp_path: Path):
    with pytest.raises(UserError, match="rms_eps and training.rms_floor are both 0"):
        _cfg(tmp_path, "training.rms_floor=0")
    cfg = _cfg(tmp_path)  # the authors' normaliser by default
    assert (cfg.training.rms_eps, cfg.training.rms_floor, cfg.training.loss) == (0, 0.01, "sum")
    with pytest.raises(UserError, match="training.loss must be one of mean, sum"):
        _cfg(tmp_path, "training.loss=total")


def test_summed_loss_scales_the_gradient_by_the_frames(tmp_path: Path, tiny_jsb: Path, monkeypatch):
    """loss: sum (the authors') weights every sequence by 1, loss: mean by 1 / the batch's frames."""
    seen = []
    real = torch.Tensor.backward

    def record(self, *args, **kwargs):
        seen.append(self.item())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(training, "FAST_UPDATE", False)  # the autograd path's loss (test_fastpath: the same)
    monkeypatch.setattr(torch.Tensor, "backward", record)
    for loss in ("mean", "sum"):
        train(
            _cfg(tmp_path, f"training.loss={loss}", "training.max_epochs=1", f"run.name={loss}"), quiet=True
        )
    half = len(seen) // 2
    mean, total = seen[:half], seen[half:]
    assert total[0] / mean[0] > 10  # the first batch: same model, same data, summed over its ~100+ frames


def test_noise_on_input_and_recurrent_weights(tmp_path: Path, tiny_jsb: Path):
    a = train(
        _cfg(tmp_path, "run.name=u", "training.max_epochs=1", "training.noise_on=recurrent"), quiet=True
    )
    b = train(
        _cfg(tmp_path, "run.name=wu", "training.max_epochs=1", "training.noise_on=input_recurrent"),
        quiet=True,
    )
    c = train(
        _cfg(
            tmp_path,
            "run.name=wu0",
            "training.max_epochs=1",
            "training.noise_on=input_recurrent",
            "training.weight_noise=0",
        ),
        quiet=True,
    )
    d = train(
        _cfg(
            tmp_path,
            "run.name=u0",
            "training.max_epochs=1",
            "training.noise_on=recurrent",
            "training.weight_noise=0",
        ),
        quiet=True,
    )
    assert a["test_nll"] != b["test_nll"]  # W's noise changes the run
    assert c["test_nll"] == d["test_nll"]  # with no noise the switch changes nothing


def test_train_split_is_scored_at_new_bests_and_every_n_epochs(tmp_path: Path, tiny_jsb: Path):
    cfg = _cfg(
        tmp_path,
        "training.max_epochs=6",
        "training.eval_train_every=3",
        "training.lr=30",
        "training.clip_norm=30",
    )
    summary = train(cfg, quiet=True)
    rows = list(
        csv.DictReader((tmp_path / "runs" / "jsb" / "gru" / summary["run_name"] / "metrics.csv").open())
    )
    best_so_far, bests = float("inf"), set()
    for r in rows:
        if float(r["valid_nll_seq"]) < best_so_far:
            best_so_far, bests = float(r["valid_nll_seq"]), bests | {int(r["epoch"])}
    scored = {int(r["epoch"]) for r in rows if r["train_nll"] != ""}
    assert scored == bests | {3, 6} and all(
        (r["train_nll"] == "") == (r["train_nll_seq"] == "") for r in rows
    )
    assert len(scored) < 6  # lr 1.0 does not improve every epoch: some epochs were not scored
    assert summary["train_nll_seq"] is not None and summary["test_nll_seq"] is not None


def test_select_metric_picks_the_best_epoch(tmp_path: Path, tiny_jsb: Path):
    for metric, column in (("seq", "valid_nll_seq"), ("frame", "valid_nll")):
        s = train(
            _cfg(tmp_path, f"training.select={metric}", f"run.name={metric}", "training.lr=0.3"), quiet=True
        )
        rows = list(csv.DictReader((tmp_path / "runs" / "jsb" / "gru" / metric / "metrics.csv").open()))
        best = min(rows, key=lambda r: float(r[column]))
        assert s["best_epoch"] == int(best["epoch"]) and s["best_valid_nll"] == pytest.approx(
            float(best[column])
        )


# --- successive halving -------------------------------------------------------------------------------------


def _rows(values: list[float]) -> list[dict]:
    return [{"epoch": str(e + 1), "valid_nll_seq": str(v)} for e, v in enumerate(values)]


def test_successive_halving_keeps_the_best_third_by_best_valid_so_far(tmp_path: Path):
    dirs = [tmp_path / f"t{i}" for i in range(5)]
    sh = SuccessiveHalving(Halving((2, 4), 3), dirs, "valid_nll_seq")
    alive = {d: _rows([5.0 - i, 4.0 + (i == 4) * -2]) for i, d in enumerate(dirs)}  # t4: best 1.0 at epoch 1
    assert sh(1, alive) == {}  # not a rung
    pruned = sh(2, alive)
    assert set(pruned) == set(dirs[:3]) and "ranked 1 of 5" not in pruned[dirs[0]]  # keep ceil(5/3) = 2
    assert "successive halving kept the best 2" in pruned[dirs[0]]


def test_successive_halving_reads_stopped_trials_from_their_folders(tmp_path: Path):
    """A trial that stopped before the rung keeps its place; one pruned at an earlier rung has none."""
    dirs = [tmp_path / f"t{i}" for i in range(4)]
    for d, status, pruned, values in (
        (dirs[0], "complete", None, [1.0]),  # early-stopped, the best of all
        (dirs[1], "pruned", 2, [9.0, 9.0]),  # out since rung 2
    ):
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"status": status, "pruned_epoch": pruned}))
        (d / "metrics.csv").write_text(
            "epoch,valid_nll_seq\n" + "".join(f"{i + 1},{v}\n" for i, v in enumerate(values))
        )
    sh = SuccessiveHalving(Halving((2, 4), 2), dirs, "valid_nll_seq")
    alive = {dirs[2]: _rows([3.0] * 4), dirs[3]: _rows([2.0] * 4)}
    assert set(sh(4, alive)) == {dirs[2]}  # cohort t0, t2, t3: keep 2 -> t0 (stopped) and t3


def test_a_pruned_search_stops_trials_and_a_rerun_keeps_its_record(
    tmp_path: Path, tiny_jsb: Path, results: Path, monkeypatch
):
    from gru_bench.experiments import search

    kwargs = dict(
        trials=4, overrides=tuple(TINY[:3]) + ("training.max_epochs=4",), workers=1, prune=Halving((1, 2), 2)
    )
    whole = search.search(CONFIG, name="whole", **kwargs)
    statuses = [t["status"] for t in whole["trials"]]
    assert statuses.count("pruned") == 3 and whole["chosen"] is not None  # 4 -> 2 at epoch 1 -> 1 at epoch 2
    assert sorted(t["pruned_epoch"] for t in whole["trials"] if t["pruned_epoch"]) == [1, 1, 2]
    assert [t["epochs"] for t in whole["trials"] if t["chosen"]] == [4]
    again = search.search(CONFIG, name="whole", **kwargs)  # every trial is final: nothing retrains
    assert again == whole


def test_authors_pitch_layout_gives_the_authors_input_widths(shared_datasets: Path, data_home: Path):
    """data.pitches: authors -> MIDI pitch 1 .. the dataset's highest: 96/93/105/108 columns (their code)."""
    from gru_bench import data
    from gru_bench.data.prepare import prepare
    from gru_bench.paths import raw_dir

    widths = {}
    for key, name in [
        ("jsb", "JSB_Chorales.mat"),
        ("nottingham", "Nottingham.mat"),
        ("musedata", "MuseData.mat"),
        ("piano-midi", "Piano_midi.mat"),
    ]:
        raw_dir(key).mkdir(parents=True)
        shutil.copy(shared_datasets / "mat" / name, raw_dir(key))
        prepare(key, echo=lambda _: None)
        rolls = data.load(key)
        keys = data.Keyboard.of("authors", rolls)
        widths[key] = keys.width
        roll = rolls.splits["test"][0]
        frames = keys.from_piano(roll)
        assert frames.shape == (len(roll), keys.width)
        # column j of the authors' layout is MIDI pitch j + 1; of ours, pitch 21 + j
        assert np.array_equal(np.argwhere(frames)[:, 1], np.argwhere(roll)[:, 1] + 20)
        assert np.array_equal(keys.to_piano(frames), roll)
        assert data.Keyboard.of("piano", rolls).from_piano(roll) is roll  # the default: no copy, no change
    assert widths == {"jsb": 96, "nottingham": 93, "musedata": 105, "piano-midi": 108}


def test_a_note_off_the_keyboard_is_refused():
    from gru_bench.data import Keyboard

    roll = np.zeros((3, 88), bool)
    roll[1, 80] = True  # MIDI 101
    with pytest.raises(UserError, match="outside MIDI pitches 1-96"):
        Keyboard(1, 96).from_piano(roll)


def test_authors_pitches_train_evaluate_and_sample(tmp_path: Path, tiny_jsb: Path):
    """A run on the authors' columns: the model has their width, keeps its own config hash (the default
    layout keeps the hash runs had before the switch existed), evaluates and samples back to 88 keys."""
    from gru_bench.config import config_hash, experiment_keys, flatten
    from gru_bench.report.samples import sample
    from gru_bench.training.rundir import load_run

    cfg = _cfg(tmp_path, "run.name=authors", "data.pitches=authors")
    summary = train(cfg, quiet=True)
    run = tmp_path / "runs" / "jsb" / "gru" / "authors"
    model, saved = load_run(run)
    assert saved.data.pitches == "authors"
    assert model.n_in == 108  # tiny_jsb's notes reach the top key, MIDI 108
    assert summary["params"] == 3 * 6 * (108 + 6 + 1) + 6 * 108 + 108
    again = training.evaluate(run, "test")
    assert again.seq == [summary["test_nll_seq"]]
    out = sample(run, steps=5, out=tmp_path / "s.mid", primer=2, quiet=True)
    assert out.is_file() and out.with_suffix(".png").is_file()

    default = _cfg(tmp_path)
    old = {
        k: v for k, v in flatten(default.to_dict()).items() if k != "data.pitches"
    }  # a config.yaml of before
    assert experiment_keys(flatten(default.to_dict())) == experiment_keys(old)
    assert config_hash(cfg) != config_hash(default)
