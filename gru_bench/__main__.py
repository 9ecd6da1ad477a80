"""`python -m gru_bench`: the `gru-bench` command line."""

from gru_bench.cli import app

app(prog_name="gru-bench")
