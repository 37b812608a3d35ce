"""Exceptions meant for users: each message says what is wrong and what to run.

Library code raises these; only the CLI and the desk turn them into one-line messages.
"""


class MadoguchiError(Exception):
    """Base of every error the CLI and the desk report as one line."""


class CorpusError(MadoguchiError):
    """The corpus markdown is malformed; the message names the file and line."""

    def __init__(self, path, line: int, message: str):
        self.path, self.line = path, line
        super().__init__(f"{path}:{line}: {message}")


class IndexStateError(MadoguchiError):
    """The index is missing, stale or damaged; the message says what to run."""


class QueryError(MadoguchiError):
    """The question cannot be searched as given (e.g. too long)."""


class StoreError(MadoguchiError):
    """The log cannot be set up as configured (a bad database URL, a replica name already running).
    A database that is down, or has a newer schema, is not an error: the desk answers and waits."""


class ConfigError(MadoguchiError):
    """A setting (an environment variable or a flag) has a value the desk cannot use."""
