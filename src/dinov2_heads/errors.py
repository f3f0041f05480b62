"""The base of the library's own errors.

Every error the library raises on purpose about a file or its content derives from
:class:`Dinov2HeadsError`, so a caller can catch that one class. Each is also the built-in error
that describes it: content problems are ``ValueError``, file-system problems ``OSError``.
Plain argument mistakes stay plain ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations


class Dinov2HeadsError(Exception):
    """Base class of the errors the library raises deliberately."""
