"""A fast module's memory of a kernel that failed: the plain computation from then on, and one
warning per cause of failure."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How many module names a warning lists before "and N more".
NAMES_SHOWN = 5


@dataclass
class _Failures:
    """The modules in which kernels failed for one cause, in the order they failed."""

    kernels: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)


# (error type, last line of its message) -> failures, while failures_summarised() is open.
_PENDING: ContextVar[dict[tuple[str, str], _Failures] | None] = ContextVar(
    "dinov2_heads_kernel_failures", default=None
)


@contextlib.contextmanager
def failures_summarised() -> Iterator[None]:
    """Collect the kernel failures of the code inside; log one warning per cause at the end.

    A broken Triton fails the same way in every module of a forward pass (73 on ViT-L): one
    warning says so, with the number of modules and the first names, instead of one warning per
    module. Each failing module still falls back on its own. Nested uses report at the
    outermost; without one, each failure is logged when it happens.
    """
    if _PENDING.get() is not None:
        yield
        return
    pending: dict[tuple[str, str], _Failures] = {}
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
        for cause, failures in pending.items():
            _warn(cause, failures)


class KernelFallback:
    """Mixed into the fast modules whose kernels may fail to build or launch on a machine.

    A kernel that fails in a module (Triton missing a compiler, an unusual GPU, a private torch
    operation gone from a later release) makes that module compute the plain way from then on.
    Other modules keep trying their kernels: nothing is switched off for the whole process.
    Failures are logged as warnings naming the modules, one per cause within a forward pass of
    an accelerated backbone (:func:`failures_summarised`). Running out of GPU memory is the
    batch's fault, not the kernel's: it is raised as PyTorch's own operations would raise it.
    """

    #: The module's name in the model :func:`~dinov2_heads.accel.accelerate` was given.
    accel_name: str = ""
    #: Set when a kernel failed in this module; it then computes the plain way.
    kernel_failed: bool = False
    #: Whether the module's Triton kernels also go into the graphs ``torch.compile`` captures,
    #: as the custom operators of :mod:`dinov2_heads.accel.norm_ops`
    #: (``accelerate(model, compiled_kernels=True)``).
    compiled_kernels: bool = False

    def try_kernel(self, kernel: str, launch: Callable[[], _T]) -> _T | None:
        """``launch()``, or None (the failure logged) if ``kernel`` fails here.

        Args:
            kernel: What ``launch`` runs, for the warning ("the Triton LayerNorm kernel").
            launch: Runs the kernel and returns its result.
        """
        if self.kernel_failed:
            return None
        try:
            return launch()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:  # any failure to build or launch: compute the plain way
            self.kernel_failed = True
            lines = [line for line in str(error).splitlines() if line.strip()]
            cause = (type(error).__name__, lines[-1][:300] if lines else "")
            name = self.accel_name or type(self).__name__
            pending = _PENDING.get()
            failures = _Failures() if pending is None else pending.setdefault(cause, _Failures())
            if kernel not in failures.kernels:
                failures.kernels.append(kernel)
            failures.modules.append(name)
            if pending is None:
                _warn(cause, failures)
            return None


def _warn(cause: tuple[str, str], failures: _Failures) -> None:
    error, message = cause
    kernels = " and ".join(failures.kernels)
    modules = failures.modules
    if len(modules) == 1:
        logger.warning(
            "%s failed in %s (%s: %s); this module computes with PyTorch's operations from now on",
            kernels,
            modules[0],
            error,
            message,
        )
        return
    shown = ", ".join(modules[:NAMES_SHOWN])
    more = f" and {len(modules) - NAMES_SHOWN} more" if len(modules) > NAMES_SHOWN else ""
    logger.warning(
        "%s failed in %d modules (%s%s) (%s: %s); these modules compute with PyTorch's "
        "operations from now on",
        kernels,
        len(modules),
        shown,
        more,
        error,
        message,
    )
