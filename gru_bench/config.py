"""Experiment configs: YAML files with `inherit:`, command-line overrides, and strict one-line validation.

A config is checked completely before any data is loaded or any model is built, so a typo costs a second,
not a night. Every error names the file (or the `--set` override) that set the value, the dotted key and what
is allowed, e.g. `configs/jsb/gru.yaml: training.lr must be a positive number, got -1`.

This module owns the configs' vocabulary, without importing torch: the allowed words of every key (models and
the optimizer import theirs from here), dotted keys (`flatten`), which keys may differ within one lockstep
stack (`stack_settings`) and the hash of an experiment.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gru_bench import paper
from gru_bench.data import PITCH_LAYOUTS, ROUTES, Resolved, resolve
from gru_bench.data.registry import DATASETS
from gru_bench.errors import UserError
from gru_bench.paths import configs_dir

CONFIGS_DIR = configs_dir()  # shipped configs and sweeps (package data; a checkout's configs/ links here)
DEVICES = ("auto", "cpu", "cuda")
LR_DECAYS = ("linear", "none")
LOSSES = ("mean", "sum")
NOISE_ON = ("recurrent", "input_recurrent")
METRIC_NAMES = ("seq", "frame")  # seq: mean over sequences of the per-frame NLL (the paper's); frame: pooled
IMPLS: tuple[str, ...] = ("paper", "fused")  # models/stacked.py
FAST_MODES: tuple[str, ...] = ("auto", "on", "off")  # numba CPU kernels (models/kernels.py)
CLIPS = ("update", "grad", "none")  # which per-model norm StackedRMSProp clips (models/optim.py)
LR_KEY = "training.lr"
SEED_KEY = "training.seed"

# A check is (predicate, what is allowed); the type is part of the check so one message covers both.
Check = tuple[Callable[[Any], bool], str]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


POSITIVE: Check = (lambda v: _num(v) and v > 0, "a positive number")
NONNEG: Check = (lambda v: _num(v) and v >= 0, "a number >= 0")
UNIT_OPEN: Check = (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)")
UNIT_HALF: Check = (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]")
POS_INT: Check = (lambda v: _int(v) and v >= 1, "an integer >= 1")
ANY_INT: Check = (_int, "an integer")
BOOL: Check = (lambda v: isinstance(v, bool), "true or false (or on/off)")
THREADS: Check = (
    lambda v: v is None or v == "auto" or (_int(v) and v >= 1),
    "auto, an integer >= 1, or null (torch's default)",
)
SEED: Check = (lambda v: _int(v) and 0 <= v < 2**63, "an integer from 0 to 2**63 - 1")
# on/off are accepted for true/false keys (the README's --set example writes `off`); they stay words
# elsewhere (model.fast takes the word `off` itself).
_BOOL_WORDS = {"on": True, "off": False}


def _opt(check: Check) -> Check:
    return (lambda v: v is None or check[0](v), f"{check[1]} or null")


def _one_of(choices: Sequence[str]) -> Check:
    return (lambda v: v in choices, "one of " + ", ".join(choices))


def _f(default: Any, check: Check) -> Any:
    return field(default=default, metadata={"check": check})


@dataclass
class DataConfig:
    route: str = _f("reference", _one_of(ROUTES))  # reference piano rolls, or our MIDI rebuild
    pitches: str = _f("piano", _one_of(PITCH_LAYOUTS))  # model columns: 88 keys | authors: MIDI 1..highest


@dataclass
class ModelConfig:
    cell: str = _f("gru", _one_of(paper.CELLS))
    impl: str = _f("paper", _one_of(IMPLS))
    hidden: int | None = _f(None, _opt(POS_INT))  # null: Table 1 of the paper
    param_budget: int | None = _f(None, _opt(POS_INT))  # hidden size with the closest parameter count
    fast: str = _f("auto", _one_of(FAST_MODES))  # numba CPU kernel: auto (when available), on, off


@dataclass
class TrainingConfig:
    seed: int = _f(1, SEED)
    device: str = _f("auto", _one_of(DEVICES))  # auto: cuda when available
    threads: int | str | None = _f("auto", THREADS)  # CPU threads; see stack_threads
    batch_size: int = _f(1, POS_INT)  # sequences per update (1: the paper, whole sequence per update)
    eval_batch_size: int = _f(64, POS_INT)  # padded sequences per evaluation batch (speed only)
    max_epochs: int = _f(500, POS_INT)
    patience: int | None = _f(40, _opt(POS_INT))  # epochs without a better valid NLL before stopping
    lr: float = _f(1e-3, POSITIVE)
    lr_decay: str = _f("linear", _one_of(LR_DECAYS))
    lr_final: float = _f(0.01, UNIT_HALF)  # linear decay: lr x lr_final at the last epoch
    loss: str = _f("sum", _one_of(LOSSES))  # summed over frames (the authors') | mean: per frame
    momentum: float = _f(0.9, UNIT_OPEN)
    rms_decay: float = _f(0.95, UNIT_OPEN)
    rms_eps: float = _f(0.0, NONNEG)  # RMS normaliser max(sqrt(n + rms_eps), rms_floor); authors: 0 and 0.01
    rms_floor: float = _f(0.01, NONNEG)
    clip: str = _f("update", _one_of(CLIPS))  # which per-model norm is rescaled to at most clip_norm
    clip_norm: float = _f(1.0, POSITIVE)
    clip_velocity: bool = _f(False, BOOL)  # clip="update": true stores the clipped step as velocity
    weight_noise: float = _f(0.075, NONNEG)  # std of Gaussian noise on the recurrent weights, per update
    noise_on: str = _f("input_recurrent", _one_of(NOISE_ON))  # W and U (the authors') | recurrent: U
    select: str = _f(
        "seq", _one_of(METRIC_NAMES)
    )  # valid metric that picks the best epoch: seq = the paper's
    eval_train_every: int | None = _f(
        10, _opt(POS_INT)
    )  # train split also at every new best (null: only then)
    init_scale: float = _f(0.1, POSITIVE)  # uniform(-scale, scale) initialisation
    init_orthogonal: bool = _f(True, BOOL)  # orthogonal recurrent matrices
    shuffle: bool = _f(True, BOOL)  # new order of the training sequences every epoch


NAME: Check = (
    lambda v: isinstance(v, str) and re.fullmatch(r"[\w.+-]+", v) is not None and set(v) != {"."},
    "a name of letters, digits, . _ + - (not . or ..)",
)


@dataclass
class RunConfig:
    name: str | None = _f(None, _opt(NAME))  # null: seed<seed>, plus -<config hash> when overridden
    out_dir: str | None = _f(None, _opt((lambda v: isinstance(v, str) and v != "", "a folder path")))


SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig, "run": RunConfig}

# Keys that identify the replicate or the machine, not the experiment: excluded from config_hash.
NOT_HASHED = {
    "training.seed",
    "training.device",
    "training.threads",
    "training.eval_batch_size",
    "model.fast",
    "run.name",
    "run.out_dir",
}

# Keys added after results were committed, with the value every older run had: at that value they are left
# out of config_hash and of the report's grouping, so an older run (its config.yaml lacks the key) keeps its
# identity and a sweep still recognises it as finished.
LATER_KEYS: dict[str, Any] = {"data.pitches": "piano"}


def experiment_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys that define an experiment: all but NOT_HASHED and LATER_KEYS at their old value."""
    return {
        k: v for k, v in flat.items() if k not in NOT_HASHED and (k not in LATER_KEYS or LATER_KEYS[k] != v)
    }


# Fields that may differ between the models of one lockstep stack (everything else defines the stack).
PER_MODEL = {
    "training.seed",
    "training.lr",
    "training.lr_decay",
    "training.lr_final",
    "training.momentum",
    "training.rms_decay",
    "training.rms_eps",
    "training.rms_floor",
    "training.loss",
    "training.select",
    "training.eval_train_every",
    "training.clip_norm",
    "training.weight_noise",
    "training.max_epochs",
    "training.patience",
    "training.shuffle",
    "run.name",
    "run.out_dir",
}


@dataclass
class Config:
    dataset: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    source: str = ""  # the file it was loaded from (messages only)
    base_hash: str = ""  # config_hash of the file before overrides (run names)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what `config.yaml` of a run holds)."""
        out: dict[str, Any] = {"dataset": self.dataset}
        for name in SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        return out

    def get(self, key: str) -> Any:
        section, _, name = key.partition(".")
        return getattr(getattr(self, section), name) if name else getattr(self, section)

    def replace(self, **changes: Any) -> Config:
        """A copy with dotted keys changed, e.g. `cfg.replace(**{"training.seed": 2})` (validated)."""
        return _build(
            _merge(self.to_dict(), _nest(changes)),
            {k: "replace()" for k in changes},
            self.source,
            self.base_hash,
        )


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: YAML 1.1 reads `1e-3` as a string and `on`/`off`/`yes`/`no` as booleans."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A YAML scalar as typed on the command line (`3e-4` -> float, `null` -> None, `true` -> bool)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def read_yaml(path: Path, where: str | None = None) -> Any:
    """A YAML file's data (YAML 1.2 scalars, as configs read them); a missing, unreadable or malformed file
    is a one-line UserError that starts with `where` (default: the path)."""
    where = where or str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{where} not found") from None
    except OSError as e:
        raise UserError(f"{where} cannot be read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{where} is not a text file (not UTF-8): give a YAML file") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{line}: {problem}") from None


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    """Merged mapping of `path` and its `inherit:` ancestors, and which file set each dotted key."""
    if path in chain:
        raise UserError("inherit cycle: " + " -> ".join(str(p) for p in (*chain, path)))
    raw = read_yaml(path, f"{chain[-1]}: inherit: {path}" if chain else str(path))
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}: must be a mapping (dataset, data, model, training, run), got {type(raw).__name__}"
        )
    for name in SECTIONS:
        if name in raw and raw[name] is None:
            del raw[name]  # an empty section (`training:` with no keys) changes nothing it inherits
        elif name in raw and not isinstance(raw[name], dict):
            raise UserError(f"{path}: {name} must be a mapping of keys, got {raw[name]!r}")
    merged: dict = {}
    origin: dict[str, str] = {}
    parent = raw.pop("inherit", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise UserError(f"{path}: inherit must be a path to a YAML file, got {parent!r}")
        merged, origin = _read_yaml(
            (path.parent / parent).resolve() if not Path(parent).is_absolute() else Path(parent),
            (*chain, path),
        )
    merged = _merge(merged, raw)
    origin.update({k: str(path) for k in _flat_keys(raw)})
    return merged, origin


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        keys += _flat_keys(v, key + ".") if isinstance(v, dict) and not prefix else [key]
    return keys


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        if name:
            out.setdefault(section, {})[name] = value
        else:
            out[section] = value
    return out


def _unknown(where: str, key: Any, allowed: Sequence[str], scope: str) -> UserError:
    key = str(key)  # YAML keys may be numbers
    guess = difflib.get_close_matches(key.rpartition(".")[2], allowed, n=1)
    hint = f"; did you mean {scope}{guess[0]}?" if guess else ""
    return UserError(
        f"{where}: unknown key {key} (allowed{' in ' + scope.rstrip('.') if scope else ''}: "
        f"{', '.join(allowed)}){hint}"
    )


def _build(raw: dict, origin: dict[str, str], source: str, base_hash: str | None = None) -> Config:
    """Validate every key and value of a merged mapping and make the Config."""
    for key in raw:
        if key != "dataset" and key not in SECTIONS:
            raise _unknown(origin.get(key, source), key, ["dataset", *SECTIONS], "")
    if raw.get("dataset") is None:
        raise UserError(
            f"{source}: dataset is required (one of {', '.join(DATASETS)}, or a prepared folder name)"
        )
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise UserError(f"{origin.get(name, source)}: {name} must be a mapping of keys, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = dict(values)
        for key, value in values.items():
            dotted = f"{name}.{key}"
            if key not in fields:
                raise _unknown(origin.get(dotted, source), dotted, list(fields), name + ".")
            ok, allowed = fields[key].metadata["check"]
            if fields[key].metadata["check"] is BOOL and isinstance(value, str):
                value = values[key] = _BOOL_WORDS.get(value.lower(), value)
            if not ok(value):
                raise UserError(f"{origin.get(dotted, source)}: {dotted} must be {allowed}, got {value!r}")
        sections[name] = cls(**values)
    route_from = origin.get("data.route")
    chosen = route_from is not None and Path(route_from) != CONFIGS_DIR / "defaults.yaml"
    route = sections["data"].route if chosen else None
    dataset = _dataset(raw["dataset"], origin.get("dataset", source), route)
    sections["data"].route = dataset.route  # a folder prepared with --from-midi trains by its name alone
    cfg = Config(dataset=dataset.key, **sections, source=source)
    if cfg.model.hidden is not None and cfg.model.param_budget is not None:
        raise UserError(
            f"{origin.get('model.param_budget', source)}: set model.hidden or model.param_budget, "
            "not both (the other must be null)"
        )
    if cfg.training.rms_eps == 0 and cfg.training.rms_floor == 0:
        raise UserError(
            f"{origin.get('training.rms_eps', source)}: training.rms_eps and training.rms_floor are both 0, "
            "so a zero gradient divides 0 by 0; set one of them > 0 (e.g. rms_floor: 0.01, the authors')"
        )
    cfg.base_hash = base_hash or config_hash(cfg)
    return cfg


def _dataset(name: Any, where: str, route: str | None) -> Resolved:
    if not isinstance(name, str):
        raise UserError(f"{where}: dataset must be a name, got {name!r}")
    return resolve(name, route, where)


def parse_override(text: str) -> tuple[str, Any]:
    """`training.lr=3e-4` -> ("training.lr", 0.0003)."""
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. --set training.lr=3e-4")
    return key, parse_value(value.strip())


def resolve_path(path: str | Path) -> Path:
    """A config file, or the shorthand `<dataset>/<cell>` for a config shipped in configs/."""
    p = Path(path)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    shipped = CONFIGS_DIR / f"{path}.yaml"
    return shipped if shipped.exists() else p


def load_config(
    path: str | Path, overrides: Sequence[str] = (), labels: dict[str, str] | None = None
) -> Config:
    """Load a YAML config (following `inherit:`), apply `KEY=VALUE` overrides and validate everything.

    `labels` maps an override to the option the user typed (`--epochs 0`), which messages then name."""
    path = resolve_path(path)
    if not path.exists() and path.suffix not in (".yaml", ".yml"):
        raise UserError(
            f"{path} not found: give a config file, or <dataset>/<cell> for a shipped "
            f"configs/<dataset>/<cell>.yaml (datasets {', '.join(DATASETS)}; cells {', '.join(paper.CELLS)})"
        )
    raw, origin = _read_yaml(path, ())
    base_hash = None
    if overrides:
        try:
            base_hash = config_hash(_build(raw, origin, str(path)))
        except UserError:  # the file alone is incomplete; the overrides complete it
            base_hash = ""
    for text in overrides:
        key, value = parse_override(text)
        section, dot, name = key.partition(".")
        if section != "dataset" and (not dot or section not in SECTIONS):
            raise _unknown(f"--set {text}", key, ["dataset", *(f"{s}.*" for s in SECTIONS)], "")
        raw = _merge(raw, _nest({key: value}))
        origin[key] = (labels or {}).get(text, f"--set {text}")
    return _build(raw, origin, str(path), base_hash)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping (`Config.to_dict()`, a run's config.yaml) with dotted keys: training.lr, ..."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


CPUS_VAR = "GRU_BENCH_CPUS"  # the CPUs one training process may use; a sweep sets it for each worker
MKL_BRANCH_VAR, MKL_EXACT = "MKL_CBWR", "AUTO,STRICT"


def exact_mkl() -> None:
    """Ask MKL for strict reproducible mode on its own branch for this CPU unless $MKL_CBWR chooses one:
    there a row of a product rounds the same whatever the number of rows and wherever the data lie, which
    the BLAS path's promise (a stacked or padded model equals the model alone) needs. Without STRICT, MKL's
    AVX-512 branch (its default on Intel CPUs) breaks it; the AVX2 branch in strict mode keeps it too but
    is ~1.5x slower on large products there (docs/models-and-speed.md, "BLAS path").
    MKL reads the setting at its first call, so this must run before any."""
    os.environ.setdefault(MKL_BRANCH_VAR, MKL_EXACT)


def available_cpus() -> int:
    """CPUs this process may use: $GRU_BENCH_CPUS, else the CPUs it is allowed to run on."""
    if os.environ.get(CPUS_VAR, "").isdigit() and int(os.environ[CPUS_VAR]) > 0:
        return int(os.environ[CPUS_VAR])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def stack_threads(setting: int | str | None, k: int) -> tuple[int | None, int]:
    """`training.threads` for a stack of k models -> (torch's threads, None: its default; threads that
    update the stack's models, each its own share of them).

    auto: torch on one thread (these models are far too small for intra-op parallelism, and on a busy
    machine torch's spinning OpenMP threads made an epoch 10x slower) and the k models spread over the
    available CPUs (bit-identical to training each alone). N: both N. null: torch's default, one updater.
    """
    if setting == "auto":
        return 1, max(1, min(k, available_cpus()))
    return setting, setting or 1


def config_hash(cfg: Config) -> str:
    """Short hash of the experiment (not the seed, device or run name): the seeds of one setup share it."""
    flat = experiment_keys(flatten(cfg.to_dict()))
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:8]


def stack_settings(cfg: Config) -> dict[str, Any]:
    """What the models of one lockstep stack must share: every key but PER_MODEL (dataset included)."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if k not in PER_MODEL}


def override(key: str, value: Any) -> str:
    """`key=value` with the value in YAML, which is how `load_config` reads overrides (1e-05 -> 1.0e-05)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()  # a scalar ends "\n..." (document end)
    return f"{key}={text.removesuffix('...').strip()}"


def run_name(cfg: Config) -> str:
    """`run.name`, else `seed<seed>` for the config file as written (any seed, device or run options), else
    `seed<seed>-<config hash>`: overriding e.g. the learning rate never collides with the default run."""
    if cfg.run.name:
        return cfg.run.name
    h = config_hash(cfg)
    return f"seed{cfg.training.seed}" + (f"-{h}" if h != cfg.base_hash else "")


def dump(cfg: Config) -> str:
    """The resolved config as YAML (loads back to an equal Config)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def parse_ints(text: str, option: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] for a comma-separated CLI option, with a one-line error naming it."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None


def parse_seeds(text: str) -> list[int]:
    """`1,2,3` -> [1, 2, 3] (the --seeds option): distinct integers."""
    seeds = parse_ints(text, "--seeds")
    if not seeds or len(set(seeds)) != len(seeds) or not all(SEED[0](s) for s in seeds):
        raise UserError(
            f"--seeds {text}: expected distinct comma-separated integers from 0 to 2**63 - 1, "
            "e.g. --seeds 1,2,3"
        )
    return seeds
