"""Exceptions raised by kquant.

Every error meant for a user derives from :class:`KquantError`; its message is a
single line that the CLI prints as ``kquant: error: <message>`` before exiting
with a non-zero status.
"""

from __future__ import annotations


class KquantError(Exception):
    """Base class of every error kquant reports to a user (one-line message)."""

    exit_code = 2

    def __str__(self) -> str:  # keep messages on one line whatever the cause
        return " ".join(super().__str__().split())


class ParameterError(KquantError, ValueError):
    """A parameter is out of range or of the wrong type."""


class InputError(KquantError):
    """The source cannot be read as an image kquant accepts."""


class ImageTooLargeError(InputError):
    """The image header claims more pixels than the configured limit."""


class StoreError(KquantError):
    """A path is not a kquant store, or the store is damaged."""


class NoSpaceError(StoreError):
    """The device holding the store ran out of space (or quota) during the write."""

    exit_code = 1


class IncompleteStoreError(StoreError):
    """The store was not completed by the pipeline (crashed or still being written)."""


class TargetExistsError(KquantError):
    """The output exists and overwriting was not asked for."""


class TargetLockedError(KquantError):
    """Another run is writing the same target."""


class OutOfMemoryError(KquantError):
    """The process ran out of memory (e.g. decoding a tile too large for the machine)."""

    exit_code = 1


def reason(exc: BaseException) -> str:
    """An exception's message for a one-line error, its type's name when the message is
    empty (``MemoryError()``, ``zlib.error()``): no message ends with an empty reason."""
    return " ".join(str(exc).split()) or type(exc).__name__
