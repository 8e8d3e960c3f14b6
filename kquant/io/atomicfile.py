"""Output files written whole or not at all, never through a symbolic link.

:func:`replacing` creates a temporary file under a new random name in the output's own
folder, exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``: a file or a symbolic link already
at that name is never opened), hands the open file to the writer, and renames it onto the
output once the writer is done; on any error the temporary file is removed and the output
is untouched. The rename replaces whatever is at the output's name (a symbolic link
included) and never writes through it. Without ``overwrite`` the file is moved into place
by a hard link, which fails if the name exists, so an output that appeared meanwhile is
not replaced either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from typing import BinaryIO

from kquant.errors import TargetExistsError

#: Tag of the temporary names: ``.NAME.kquant-tmp-<12 hex digits>`` beside the output.
TMP_TAG = "kquant-tmp"
_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def temporary_name(path: str | os.PathLike) -> str:
    """A new hidden name beside ``path`` (``.NAME.kquant-tmp-<random>``); not created."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{name}.{TMP_TAG}-{secrets.token_hex(6)}")


def create_exclusive(path: str | os.PathLike) -> tuple[BinaryIO, str]:
    """Open a new temporary file beside ``path`` for writing; return it and its name.

    The name is new and random, the file is created with ``O_EXCL | O_NOFOLLOW`` and the
    usual permissions (``0o666`` less the umask).

    Raises
    ------
    OSError
        If the folder cannot be written (after 100 names that all existed: EEXIST).
    """
    for _ in range(100):
        tmp = temporary_name(path)
        try:
            return open(tmp, "wb", opener=lambda p, _flags: os.open(p, _FLAGS, 0o666)), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", os.fspath(path))


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, overwrite: bool) -> Iterator[BinaryIO]:
    """Context manager: an open binary file that becomes ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or path-like
        The output (local).
    overwrite : bool, keyword-only
        Replace what is at ``path`` (the name itself: a symbolic link is replaced, not
        followed). Without it an existing ``path`` is refused at the end.

    Raises
    ------
    TargetExistsError
        If ``overwrite`` is false and ``path`` exists when the file is moved into place
        (the temporary file is removed).
    OSError
        From creating, writing or renaming the file (the temporary file is removed).
    """
    path = os.path.abspath(os.fspath(path))
    fh, tmp = create_exclusive(path)
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        _move(tmp, path, overwrite=overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _move(tmp: str, path: str, *, overwrite: bool) -> None:
    """Rename ``tmp`` onto ``path``; without ``overwrite``, only if ``path`` does not exist."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and refused if the name exists (a symbolic link too)
    except FileExistsError:
        raise TargetExistsError(f"{path} exists (use --overwrite to replace it)") from None
    except OSError as exc:  # no hard links on this file system: check, then rename
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS):
            raise
        if os.path.lexists(path):
            raise TargetExistsError(f"{path} exists (use --overwrite to replace it)") from None
        os.replace(tmp, path)
