"""Errors a user can act on.

Anything the user can fix (a bad recipe, a missing artifact, malformed input) raises a
`UserError`: the CLI prints its one-sentence message and exits with status 2, with a
traceback only under `--debug`. Everything else is a bug or an environment failure and
exits with status 1.
"""


class UserError(Exception):
    """Bad input: the message names the file, key or line and says what to do."""

    exit_code = 2


class StageFailed(Exception):
    """A stage raised while running; the runner wraps the cause with the stage's name."""

    exit_code = 1

    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause
