"""Errors the command line turns into one clear line (exit code 2) instead of a traceback."""

from __future__ import annotations


class EnkfReproError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""

    exit_code = 2


class ConfigError(EnkfReproError):
    """A config key has a wrong value; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

    @classmethod
    def line(cls, message: str) -> "ConfigError":
        """A ConfigError whose whole message is ``message`` (errors that are not about one value)."""
        err = cls("", "", "")
        err.args = (message,)
        return err


class DataError(EnkfReproError):
    """Dataset files are missing, truncated or malformed; the message names the file."""


class DivergenceError(EnkfReproError):
    """Training produced non-finite values it cannot recover from; the CSV written so far is kept."""

    exit_code = 3


class Interrupted(EnkfReproError):
    """SIGINT/SIGTERM arrived; a checkpoint was written and rerunning the command resumes."""

    exit_code = 130


class WriteFailed(EnkfReproError):
    """A file could not be written (a full disk, a quota, read-only or failing storage): the message
    names the file, the bytes it needed and the bytes free, then what is intact and what to do."""

    HINT = "the file was left as it was: free space and run the command again"

    def __init__(self, message: str, path: object = None, hint: str = HINT):
        super().__init__(f"{message}; {hint}")
        self.message, self.path, self.hint = message, path, hint

    def with_hint(self, hint: str) -> "WriteFailed":
        """The same error with ``hint`` (what is intact, what to do) in place of the general one."""
        return WriteFailed(self.message, self.path, hint)


class OutOfMemory(EnkfReproError):
    """A run does not fit in the memory of its device: the message gives what it needs, what is
    free and the settings that make it fit."""
