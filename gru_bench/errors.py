"""User-facing errors: the CLI prints their message on one line, never a traceback."""


class UserError(Exception):
    """Bad input or environment the user can fix; the message names the file/field/value and the fix."""
