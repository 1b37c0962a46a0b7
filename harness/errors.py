"""Errors a user can act on: printed as one clear line each, exit code non-zero."""


class HarnessError(Exception):
    """Bad input or state; the message names the file, field and fix."""

    exit_code = 2
