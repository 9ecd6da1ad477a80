"""User-facing errors: the CLI prints their message on one line, never a traceback."""


class UserError(Exception):
    """Bad input or environment the user can fix; the message names the file/field/value and the fix."""

    def __init__(self, message: str) -> None:
        # A value quoted from the user's input may hold line breaks: escaped, the message stays one line.
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what to do next (e.g. the `--resume` command); the CLI prints it once."""
