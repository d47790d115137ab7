"""Errors a user can act on. The CLI prints their message and exits non-zero, without a traceback."""


class BoneageError(Exception):
    """A failure whose message tells the user what went wrong and what to do."""


class BadInputError(BoneageError):
    """One input (a file, a CSV row) is unusable; ``reason`` is short enough for a quarantine file."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
