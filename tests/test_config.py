"""Configs: inheritance, overrides, YAML 1.2 scalars, run names, and one-line errors for every bad input."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gru_bench.config import (
    CONFIGS_DIR,
    SECTIONS,
    Config,
    config_hash,
    dump,
    load_config,
    parse_seeds,
    parse_value,
    run_name,
)
from gru_bench.data.registry import DATASETS
from gru_bench.errors import UserError
from gru_bench.paper import CELLS


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    """A config inheriting the shipped defaults, as a user would write one."""
    return _write(
        tmp_path / "my.yaml", f"inherit: {CONFIGS_DIR / 'defaults.yaml'}\ndataset: jsb\nmodel:\n  cell: gru\n"
    )


def _error(path, overrides=()) -> str:
    with pytest.raises(UserError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_defaults_yaml_matches_dataclass_defaults():
    # the dataclasses and configs/defaults.yaml both state the defaults: they must agree
    cfg = load_config(CONFIGS_DIR / "jsb" / "gru.yaml")
    assert cfg.to_dict() == Config(dataset="jsb").to_dict()


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("cell", CELLS)
def test_shipped_configs_load(dataset: str, cell: str):
    cfg = load_config(f"{dataset}/{cell}")  # the <dataset>/<cell> shorthand
    assert (cfg.dataset, cfg.model.cell, cfg.model.impl) == (dataset, cell, "paper")
    assert run_name(cfg) == "seed1"


def test_yaml_12_scalars():
    assert parse_value("1e-3") == pytest.approx(0.001)
    assert parse_value("off") == "off" and parse_value("yes") == "yes"
    assert parse_value("true") is True and parse_value("null") is None and parse_value("3") == 3


def test_overrides_are_typed_and_validated(cfg_file: Path):
    cfg = load_config(
        cfg_file, ["training.lr=3e-4", "model.fast=off", "training.patience=null", "model.hidden=20"]
    )
    assert cfg.training.lr == pytest.approx(3e-4) and cfg.model.fast == "off"
    assert cfg.training.patience is None and cfg.model.hidden == 20


def test_run_name_and_hash(cfg_file: Path):
    base = load_config(cfg_file)
    seeded = load_config(cfg_file, ["training.seed=7", "training.device=cpu"])
    same_lr = load_config(cfg_file, ["training.lr=1e-3"])
    other = load_config(cfg_file, ["training.lr=3e-4"])
    assert run_name(base) == "seed1" and run_name(seeded) == "seed7" and run_name(same_lr) == "seed1"
    assert config_hash(seeded) == config_hash(base) != config_hash(other)
    assert run_name(other) == f"seed1-{config_hash(other)}"
    assert run_name(load_config(cfg_file, ["run.name=mine"])) == "mine"
    assert run_name(other.replace(**{"training.seed": 2})) == f"seed2-{config_hash(other)}"


def test_dump_round_trips(tmp_path: Path, cfg_file: Path):
    cfg = load_config(cfg_file, ["training.lr=3e-4", "model.hidden=12"])
    again = load_config(_write(tmp_path / "resolved.yaml", dump(cfg)))
    assert again.to_dict() == cfg.to_dict()


def test_every_field_has_a_check():
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            ok, allowed = f.metadata["check"]
            assert ok(f.default), f"{cls.__name__}.{f.name} default fails its own check ({allowed})"


def test_bad_value_names_file_key_and_rule(tmp_path: Path, cfg_file: Path):
    bad = _write(tmp_path / "bad.yaml", f"inherit: {cfg_file}\ntraining:\n  lr: -1\n")
    assert _error(bad) == f"{bad}: training.lr must be a positive number, got -1"


def test_wrong_type(tmp_path: Path, cfg_file: Path):
    bad = _write(tmp_path / "bad.yaml", f"inherit: {cfg_file}\ntraining:\n  max_epochs: 2.5\n")
    assert _error(bad) == f"{bad}: training.max_epochs must be an integer >= 1, got 2.5"
    bad = _write(tmp_path / "bad2.yaml", f"inherit: {cfg_file}\ntraining:\n  init_orthogonal: 'yes'\n")
    assert "training.init_orthogonal must be true or false" in _error(bad)


def test_error_names_the_file_that_set_the_value(tmp_path: Path, cfg_file: Path):
    parent = _write(tmp_path / "parent.yaml", f"inherit: {cfg_file}\nmodel:\n  impl: turbo\n")
    child = _write(tmp_path / "child.yaml", "inherit: parent.yaml\n")
    assert _error(child).startswith(f"{parent.resolve()}: model.impl must be one of paper, fused")


def test_unknown_key_suggests(tmp_path: Path, cfg_file: Path):
    bad = _write(tmp_path / "bad.yaml", f"inherit: {cfg_file}\ntraining:\n  learning_rate: 0.1\n")
    msg = _error(bad)
    assert msg.startswith(f"{bad}: unknown key training.learning_rate") and "lr" in msg
    bad = _write(tmp_path / "bad2.yaml", f"inherit: {cfg_file}\noptim:\n  lr: 0.1\n")
    assert _error(bad).startswith(f"{bad}: unknown key optim")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.lr", "--set training.lr: expected KEY=VALUE"),
        ("training.lr=abc", "--set training.lr=abc: training.lr must be a positive number, got 'abc'"),
        ("training.momentum=1", "--set training.momentum=1: training.momentum must be a number in [0, 1)"),
        ("trainin.lr=1", "--set trainin.lr=1: unknown key trainin.lr"),
        ("model.nope=1", "--set model.nope=1: unknown key model.nope"),
        ("model.hidden=0", "--set model.hidden=0: model.hidden must be an integer >= 1 or null, got 0"),
        ("dataset=bach", "--set dataset=bach: dataset must be one of jsb"),
        ("model.param_budget=20000", "set model.hidden or model.param_budget, not both"),
    ],
)
def test_bad_overrides(cfg_file: Path, override: str, expected: str):
    extra = ["model.hidden=10"] if "param_budget" in override else []
    assert expected in _error(cfg_file, [*extra, override])


def test_inherit_cycle_and_missing_file(tmp_path: Path):
    a = _write(tmp_path / "a.yaml", "inherit: b.yaml\ndataset: jsb\n")
    _write(tmp_path / "b.yaml", "inherit: a.yaml\n")
    assert _error(a).startswith("inherit cycle: ")
    c = _write(tmp_path / "c.yaml", "inherit: nowhere.yaml\ndataset: jsb\n")
    assert _error(c) == f"{c}: inherit: {(tmp_path / 'nowhere.yaml').resolve()} not found"
    assert _error(tmp_path / "missing.yaml") == f"{tmp_path / 'missing.yaml'} not found"


def test_malformed_files(tmp_path: Path):
    assert "invalid YAML at line" in _error(_write(tmp_path / "x.yaml", "dataset: [jsb\n"))
    assert "must be a mapping" in _error(_write(tmp_path / "y.yaml", "- jsb\n"))
    assert "dataset is required" in _error(_write(tmp_path / "z.yaml", "model:\n  cell: gru\n"))


def test_parse_seeds():
    assert parse_seeds("1,2, 3") == [1, 2, 3]
    for bad in ("1,x", "1,1", ",", "-1", "2,-3"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)


def test_an_empty_section_keeps_what_it_inherits(tmp_path: Path):
    a = _write(
        tmp_path / "a.yaml",
        f"inherit: {CONFIGS_DIR / 'jsb/gru.yaml'}\ntraining:\n  lr: 3.0e-4\n  max_epochs: 1\n",
    )
    b = _write(tmp_path / "b.yaml", "inherit: a.yaml\ntraining:\nmodel:\n")
    cfg = load_config(b)
    assert (cfg.training.lr, cfg.training.max_epochs) == (3.0e-4, 1)
    assert cfg.model == load_config(a).model


def test_a_section_that_is_not_a_mapping_is_refused_even_with_overrides(tmp_path: Path, cfg_file: Path):
    bad = _write(tmp_path / "bad.yaml", f"inherit: {cfg_file}\ntraining: [1, 2]\n")
    assert _error(bad) == f"{bad}: training must be a mapping of keys, got [1, 2]"
    assert _error(bad, ["training.lr=0.1"]) == f"{bad}: training must be a mapping of keys, got [1, 2]"


@pytest.mark.parametrize("name", [".", "..", "..."])
def test_run_names_of_dots_only_are_refused(cfg_file: Path, name: str):
    assert "run.name must be a name" in _error(cfg_file, [f"run.name={name}"])
    assert load_config(cfg_file, ["run.name=a..b"]).run.name == "a..b"


def test_negative_seed_is_a_config_error(cfg_file: Path):
    assert "training.seed must be an integer from 0" in _error(cfg_file, ["training.seed=-1"])


def test_on_off_for_true_false_keys_only(cfg_file: Path):
    assert load_config(cfg_file, ["training.shuffle=off"]).training.shuffle is False
    assert load_config(cfg_file, ["training.init_orthogonal=On"]).training.init_orthogonal is True
    assert load_config(cfg_file, ["model.fast=off"]).model.fast == "off"


def test_labels_name_the_option_the_user_typed(cfg_file: Path):
    with pytest.raises(UserError, match=r"^--epochs 0: training.max_epochs must be"):
        load_config(cfg_file, ["training.max_epochs=0"], {"training.max_epochs=0": "--epochs 0"})


def test_a_midi_prepared_folder_trains_by_its_name(data_home: Path, cfg_file: Path):
    from gru_bench.data import processed_path

    assert "data prepare DIR [--from-midi] --name NAME" in _error(cfg_file, ["dataset=mixed"])
    _write(processed_path("mixed", "midi"), "")
    cfg = load_config(cfg_file, ["dataset=mixed"])
    assert (cfg.dataset, cfg.data.route) == ("mixed", "midi")
    msg = _error(cfg_file, ["dataset=mixed", "data.route=reference"])
    assert "set data.route: midi" in msg


# --- property: whatever the YAML or the overrides hold, the loader answers with a Config or a UserError ----

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["off", "on", "gru", "jsb", "null", "1e-3", ".", "..", "midi", "paper"]),
)
_values = st.recursive(
    _scalars,
    lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=5), v, max_size=3),
    max_leaves=6,
)
_keys = st.sampled_from(
    [
        "dataset",
        "inherit",
        "bogus",
        *SECTIONS,
        *(f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)),
    ]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(_keys | st.integers(0, 3), _values, max_size=6),
    overrides=st.lists(
        st.tuples(_keys | st.text(max_size=6), _scalars | st.text(max_size=6)).map(
            lambda kv: f"{kv[0]}={kv[1]}"
        )
        | st.text(max_size=10),
        max_size=3,
    ),
)
def test_loader_raises_nothing_but_user_errors(tmp_path: Path, data_home: Path, body: dict, overrides: list):
    nested: dict = {"inherit": str(CONFIGS_DIR / "jsb/gru.yaml")}
    for key, value in body.items():
        section, dot, name = str(key).partition(".")
        if dot and isinstance(nested.get(section, {}), dict):
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    path = tmp_path / "h.yaml"
    path.write_text(yaml.safe_dump(nested))
    try:
        cfg = load_config(path, overrides)
    except UserError as e:
        assert "\n" not in str(e) and str(e)
    else:  # a valid result is a config that loads back to itself
        assert load_config(_write(tmp_path / "dumped.yaml", dump(cfg))).to_dict() == cfg.to_dict()


def test_reading_configs_and_run_folders_does_not_load_torch():
    """Config vocabulary, run state and the scheduler are torch-free: a sweep's bookkeeping, `compare` and the
    scheduler's worker processes start in a fraction of a second."""
    code = (
        "import sys, gru_bench.config, gru_bench.training.rundir, gru_bench.experiments.scheduler; "
        "print(sorted(m for m in ('torch', 'numba') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
