"""The project's exceptions. The CLI turns any :class:`NTULMError` into a one-line message and a
non-zero exit status, never a traceback."""

from __future__ import annotations


class NTULMError(Exception):
    """Base class: a problem the user can fix (bad input, bad config, missing artifact)."""

    exit_code = 2


class ConfigError(NTULMError):
    """A config file or override is invalid; the message names the field."""


class InputError(NTULMError):
    """A bad input record or file; the message names the file, line and problem."""

    def __init__(self, path: str, line: int | None, problem: str):
        self.path, self.line, self.problem = path, line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # picklable, so a reader process can report it
        return (InputError, (self.path, self.line, self.problem))


class ArtifactError(NTULMError):
    """An artifact directory is missing, incomplete or from an incompatible version."""
