"""Errors a user can fix: every message names the problem and the fix."""


class EMTError(Exception):
    """Base class for errors caused by input (a name, a file, a config key), not by a bug."""


class UnknownNameError(EMTError, KeyError):
    """A dataset, judge, backend or model name that no registry knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RequestError(EMTError):
    """A client's mistake in one request: a server answers it with `status` and OpenAI's error shape, never with a
    traceback; the other requests of its batch go on."""

    status = 400
    kind = "invalid_request_error"
