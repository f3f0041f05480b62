"""``accelerate``: swap a model's modules for their fast versions, once, in place."""

from __future__ import annotations

import logging

from torch import nn

from dinov2_heads.accel import norm_ops
from dinov2_heads.accel.block import FastBlock
from dinov2_heads.accel.fallback import KernelFallback
from dinov2_heads.accel.layer_norm import FastLayerNorm
from dinov2_heads.accel.mlp import FastMlp
from dinov2_heads.accel.patch_embed import FastPatchEmbed
from dinov2_heads.accel.vision_transformer import FastVisionTransformer
from dinov2_heads.backbone import DinoVisionTransformer
from dinov2_heads.layers import Block, Mlp, PatchEmbed

logger = logging.getLogger(__name__)

#: Each plain class and its fast version (a subclass that adds no parameters).
FAST_VERSIONS: dict[type[nn.Module], type[nn.Module]] = {
    DinoVisionTransformer: FastVisionTransformer,
    PatchEmbed: FastPatchEmbed,
    Block: FastBlock,
    Mlp: FastMlp,
}
#: Modules whose own ``nn.LayerNorm`` children become :class:`FastLayerNorm`; LayerNorms
#: elsewhere in a model (a head's, say) are left alone.
_NORM_OWNERS = (DinoVisionTransformer, FastVisionTransformer, Block, FastBlock)


def accelerate(model: nn.Module, *, compiled_kernels: bool = False) -> list[str]:
    """Swap the modules of ``model`` for their fast versions, in place; returns their names.

    Each module of exactly one of the classes of :data:`FAST_VERSIONS` (the backbone itself,
    its patch embedding, blocks and MLPs), and each ``nn.LayerNorm`` of the backbone and of its
    blocks, becomes its fast subclass: the object stays the same (its parameters, buffers, hooks
    and every reference to it), only its class changes, so the state dict, ``.to()`` and
    checkpoints behave as before. A subclass or wrapper of those classes (a LoRA block, say) is
    left as it is.

    The fast modules take their fast computations eagerly on CUDA, and compute exactly what the
    plain modules do on CPU and while ``torch.compile``, ``torch.export`` or ``torch.jit.trace``
    traces them. :class:`~dinov2_heads.FrozenBackbone` calls this on its first CUDA batch.

    Args:
        model: Any module holding a :class:`~dinov2_heads.DinoVisionTransformer` (or its parts),
            or the backbone itself.
        compiled_kernels: Also put the Triton LayerNorm and residual kernels into the graphs
            ``torch.compile`` captures on a GPU, as the custom operators of
            :mod:`~dinov2_heads.accel.norm_ops` (registered now, importing Triton), instead of
            the plain computation that Inductor compiles itself. Opt-in until measured
            (``benchmarks/eager_speedups.py``, candidate ``custom-op+compile``). ``True`` applies
            to every fast module of ``model``, swapped now or before; ``False`` leaves modules
            swapped before as they are. Where the operators cannot be registered (no Triton),
            one warning says why and graphs compute the plain way.

    Returns:
        The names (as ``model.named_modules()`` gives them; ``""`` is ``model`` itself) of the
        modules swapped now, in model order. A second call returns ``[]``.

    Example:
        >>> from dinov2_heads import create_backbone
        >>> model = create_backbone("dinov2_vits14", depth=1)
        >>> accelerate(model)[:4]
        ['', 'patch_embed', 'blocks.0', 'blocks.0.norm1']
        >>> accelerate(model)
        []
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"accelerate expects an nn.Module, got {type(model).__name__}; pass the backbone "
            "or a model that holds it"
        )
    if not isinstance(compiled_kernels, bool):
        raise TypeError(f"compiled_kernels must be True or False, got {compiled_kernels!r}")
    owned_norms: set[int] = set()
    swapped = []
    for name, module in model.named_modules():
        # named_modules lists a parent before its children.
        if isinstance(module, _NORM_OWNERS):
            owned_norms.update(id(child) for child in module.children())
        fast = FAST_VERSIONS.get(type(module))
        if fast is None and type(module) is nn.LayerNorm and id(module) in owned_norms:
            fast = FastLayerNorm
        if fast is None:
            continue
        module.__class__ = fast
        if isinstance(module, KernelFallback):
            module.accel_name = name
        swapped.append(name)
    if swapped:
        logger.info("accelerate: %d modules swapped for their fast versions", len(swapped))
    if compiled_kernels:
        _keep_kernels_in_graphs(model)
    return swapped


def _keep_kernels_in_graphs(model: nn.Module) -> None:
    reason = norm_ops.register()
    if reason is not None:
        logger.warning(
            "accelerate(compiled_kernels=True): %s; compiled graphs compute the LayerNorms and "
            "residual additions with PyTorch's operations",
            reason,
        )
        return
    for module in model.modules():
        if isinstance(module, KernelFallback):
            module.compiled_kernels = True
