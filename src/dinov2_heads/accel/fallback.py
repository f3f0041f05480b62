"""A fast module's memory of a kernel that failed: one warning, then the plain computation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class KernelFallback:
    """Mixed into the fast modules whose kernels may fail to build or launch on a machine.

    A kernel that fails in a module (Triton missing a compiler, an unusual GPU, a private torch
    operation gone from a later release) is logged once, as a warning naming the module, and
    that module computes the plain way from then on. Other modules keep trying their kernels:
    nothing is switched off for the whole process. Running out of GPU memory is the batch's
    fault, not the kernel's: it is raised as PyTorch's own operations would raise it.
    """

    #: The module's name in the model :func:`~dinov2_heads.accel.accelerate` was given.
    accel_name: str = ""
    #: Set when a kernel failed in this module; it then computes the plain way.
    kernel_failed: bool = False

    def try_kernel(self, kernel: str, launch: Callable[[], _T]) -> _T | None:
        """``launch()``, or None (after one logged warning) if ``kernel`` fails here.

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
            logger.warning(
                "%s failed in %s (%s: %s); this module computes with PyTorch's operations "
                "from now on",
                kernel,
                self.accel_name or type(self).__name__,
                type(error).__name__,
                lines[-1][:300] if lines else "",
            )
            return None
