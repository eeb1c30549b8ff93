"""Errors a user can fix: every message names the problem and the fix."""


class EMTError(Exception):
    """Base class for errors caused by input (a name, a file, a config key), not by a bug."""


class UnknownNameError(EMTError, KeyError):
    """A dataset, judge, backend or model name that no registry knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
