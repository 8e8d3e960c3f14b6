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


class UnsafeTargetError(KquantError):
    """The output would replace what kquant may not: the source, a folder holding it, a
    folder or object that is not a kquant store, or the store being read (even with
    overwriting asked for)."""


class TargetLockedError(KquantError):
    """Another run is writing the same target."""


class ObjectStoreError(KquantError):
    """An object store refused a request: a missing bucket, access denied, another refusal."""


class StorageUnreachableError(ObjectStoreError):
    """The object store's endpoint could not be reached (refused, reset, timed out)."""

    exit_code = 1


class LockLostError(TargetLockedError):
    """This run's lock on an object-store target lapsed (not renewed within its lease) or
    was taken over; the run stopped writing."""

    exit_code = 1


class OutOfMemoryError(KquantError):
    """The process ran out of memory (e.g. decoding a tile too large for the machine)."""

    exit_code = 1


class KquantWarning(UserWarning):
    """Something a user should know that does not stop the run (the CLI prints it as
    ``kquant: warning: <message>``)."""


def reason(exc: BaseException) -> str:
    """An exception's message for a one-line error, its type's name when the message is
    empty (``MemoryError()``, ``zlib.error()``): no message ends with an empty reason."""
    return " ".join(str(exc).split()) or type(exc).__name__
