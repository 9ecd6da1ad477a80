"""Terminal output shared by the commands: a console that does not cut tables in logs, and progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def console(stderr: bool = False) -> Console:
    """A rich console; off a terminal (a pipe, a log file) 160 columns wide instead of rich's 80, so that
    tables are not cut ("notting…")."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=160)


@contextlib.contextmanager
def progress(total: int, description: str, quiet: bool = False) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr for work of `total` steps (drawn on a terminal only, gone when done; nothing
    when `quiet`); yields the function that advances it by one."""
    with Progress(
        TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=quiet, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
