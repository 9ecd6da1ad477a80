"""Chung, Gulcehre, Cho & Bengio (2014), arXiv:1412.3555: the numbers we reproduce. One source of truth."""

from __future__ import annotations

CITATION = "Chung, Gulcehre, Cho & Bengio (2014), Empirical Evaluation of Gated Recurrent Neural Networks"

CELLS: tuple[str, ...] = ("tanh", "lstm", "gru")

# Table 1: hidden units per cell, chosen so that each model has roughly 20K parameters.
HIDDEN_SIZES: dict[str, int] = {"lstm": 36, "gru": 46, "tanh": 100}

# Table 2: average negative log-likelihood per time step (nats), (train, test).
TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "nottingham": {"tanh": (3.22, 3.13), "gru": (2.79, 3.23), "lstm": (3.08, 3.20)},
    "jsb": {"tanh": (8.82, 9.10), "gru": (6.94, 8.54), "lstm": (8.15, 8.67)},
    "musedata": {"tanh": (5.64, 6.23), "gru": (5.06, 5.99), "lstm": (5.18, 6.23)},
    "piano-midi": {"tanh": (5.64, 9.03), "gru": (4.93, 8.82), "lstm": (6.49, 9.03)},
}

# Table 2 is in the pylearn2 monitor's metric: at batch size 1 the mean over sequences of each sequence's
# mean frame NLL ("seq" in gru-bench). The frame-weighted metric (all frames pooled) is that of:
BAI2018 = (
    "Bai, Kolter & Koltun (2018), An Empirical Evaluation of Generic Convolutional and Recurrent Networks"
)
# Bai et al. (2018), Table 1, test NLL per frame (frame-weighted; ~300K-parameter models on JSB, ~1M on
# Nottingham, each tuned by grid search: not the paper's ~20K-parameter models).
BAI2018_TEST: dict[str, dict[str, float]] = {
    "jsb": {"lstm": 8.45, "gru": 8.43, "tanh": 8.91, "tcn": 8.10},
    "nottingham": {"lstm": 3.29, "gru": 3.46, "tanh": 4.05, "tcn": 3.07},
}

# The paper's learning-rate search: 10 samples of log(lr) uniform in this natural-log range.
LR_SEARCH_LOG_RANGE: tuple[float, float] = (-12.0, -6.0)
LR_SEARCH_TRIALS = 10


def paper_nll(dataset: str, cell: str) -> tuple[float, float] | None:
    """(train, test) NLL from Table 2, or None where the paper has no number."""
    return TABLE2.get(dataset, {}).get(cell)
