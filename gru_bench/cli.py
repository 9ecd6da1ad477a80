"""The `gru-bench` command line: a thin layer over the library; every command calls one library function."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer

from gru_bench.errors import UserError

app = typer.Typer(help="Reproduce Chung et al. (2014): tanh-RNN vs LSTM vs GRU on polyphonic music.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Download, prepare and describe the datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def friendly(fn: Callable) -> Callable:
    """Turn UserError into a one-line message and Ctrl-C into a clean exit (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
            sys.exit(130)

    return wrapper


# --- data (download / prepare / info) -------------------------------------------------------------

# --- train / evaluate ---------------------------------------------------------------------------------

# --- compare / sample -----------------------------------------------------------------------------------

# --- bench ------------------------------------------------------------------------------------------------

# --- search / sweep -------------------------------------------------------------------------------------


if __name__ == "__main__":
    app()
