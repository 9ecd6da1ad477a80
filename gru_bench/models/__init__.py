"""Next-frame models (tanh-RNN, LSTM, GRU) as stacks of K independent models; see stacked.py."""

from gru_bench.models.stacked import (
    CELLS,
    FAST_MODES,
    IMPLS,
    StackedModel,
    build_model,
    count_params,
    hidden_for_budget,
    masked_nll,
)

__all__ = [
    "CELLS",
    "FAST_MODES",
    "IMPLS",
    "StackedModel",
    "build_model",
    "count_params",
    "hidden_for_budget",
    "masked_nll",
]
