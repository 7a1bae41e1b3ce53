"""The exception hierarchy: every error a user can cause is a SwarmError child, which the CLI prints as one line."""


class SwarmError(Exception):
    """Base of every error swarm raises on purpose; the CLI prints it as one line and exits non-zero."""

    exit_code = 1


class ConfigError(SwarmError):
    """A config file, flag or run config record is invalid or does not match the run's."""

    exit_code = 2


class DataError(SwarmError):
    """A data path is missing, empty or unreadable."""

    exit_code = 3


class NetworkError(SwarmError):
    """A peer could not be reached, or the swarm did not answer in time."""

    exit_code = 4


class AuthError(SwarmError):
    """An invite or token is missing, expired, revoked or forged."""

    exit_code = 5


class ProtocolError(SwarmError):
    """A remote peer sent a message that breaks the protocol (bad shape, NaN, wrong round)."""

    exit_code = 6


class RoundFailed(SwarmError):
    """An averaging round could not complete; the caller retries or re-syncs."""


class Alone(RoundFailed):
    """A group of one formed although other trainers were seen moments ago: the peer waits for the swarm instead of
    stepping solo (it is cut off, or the others are restarting). Its retries at the same epoch are that one wait."""


class LateForGroup(RoundFailed):
    """The epoch's group formed without this peer; `group` is the leader's description of it (a GroupInfo), so the
    peer can fetch the group's averaged result from its reducers instead of failing the round."""

    def __init__(self, message: str, group: object):
        super().__init__(message)
        self.group = group


def describe(e: BaseException) -> str:
    """One line for a log or a message: the error's last line of text, or its type when it has none (a timeout, a
    stream that closed; `e or type(e).__name__` does not do this, since every exception is truthy)."""
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__
