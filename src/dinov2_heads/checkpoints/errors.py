"""The errors raised while reading checkpoints and copying weights.

Every error the library raises on purpose derives from :class:`Dinov2HeadsError`, so a caller can
catch that one class and never needs to know about pickle, zip or ``KeyError`` exceptions.
Problems with a file's content are also ``ValueError``; problems with the file system are also
``OSError`` (and ``FileNotFoundError`` / ``IsADirectoryError`` where that is what happened).
"""

from __future__ import annotations

from dinov2_heads.errors import Dinov2HeadsError

__all__ = [
    "ArchitectureMismatchError",
    "CheckpointError",
    "CheckpointFileError",
    "CheckpointIsADirectoryError",
    "CheckpointNotFoundError",
    "Dinov2HeadsError",
    "PartialLoadError",
    "UnknownFormatError",
    "UnsafeCheckpointError",
]


class CheckpointError(Dinov2HeadsError, ValueError):
    """A checkpoint's content cannot be used: corrupted, unsafe, unknown layout, wrong model."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs arbitrary unpickling (it would run code); nothing in it was executed."""


class UnknownFormatError(CheckpointError):
    """The keys match no known layout, or more than one."""


class ArchitectureMismatchError(CheckpointError):
    """The weights do not fit the model they are for: the one error for every misfit.

    Raised by every loader for tensors that are missing, unexpected or of another shape, and for
    an architecture (a ``variant``, a ``config.json``) that differs from the weights'.
    """


class PartialLoadError(ArchitectureMismatchError):
    """``load_partial`` loaded nothing, or skipped something with ``strict=True``."""


class CheckpointFileError(Dinov2HeadsError, OSError):
    """The file system refused: the path is missing, a directory, or unreadable."""


class CheckpointNotFoundError(CheckpointFileError, FileNotFoundError):
    """No file exists at the path."""


class CheckpointIsADirectoryError(CheckpointFileError, IsADirectoryError):
    """The path names a directory, not a file."""
