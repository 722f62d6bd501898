"""Sieve error types: compile errors carry a line and column.  Trusts nothing."""

from __future__ import annotations


class SieveError(Exception):
    """Any Sieve failure."""


class SieveSyntaxError(SieveError):
    """A script that does not compile: ``line:col: message``."""

    def __init__(self, message: str, line: int = 0, col: int = 0):
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col

    def __str__(self) -> str:
        if self.line:
            return f"line {self.line}, column {self.col}: error: {self.message}"
        return f"error: {self.message}"


class SieveRuntimeError(SieveError):
    """A script that failed while running (limits, conflicts, bad values)."""

    def __init__(self, message: str, line: int = 0):
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return f"line {self.line}: error: {self.message}" if self.line else self.message


class ProtocolReject(Exception):
    """``ereject`` where the protocol can refuse the message itself (LMTP:
    the recipient's reply becomes ``550 5.7.1 <reason>``, RFC 5429 2.1);
    ``reason`` is the script's text made one safe line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
