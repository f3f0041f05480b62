"""From any DINOv2 checkpoint to a working backbone, with the architecture read from the weights."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dinov2_heads.backbone.config import VARIANTS, BackboneConfig, get_config
from dinov2_heads.backbone.vision_transformer import DinoVisionTransformer
from dinov2_heads.checkpoints.architecture import (
    HEAD_WIDTH,
    REBUILD_HINT,
    check_variant,
    describe_config,
    infer_config,
)
from dinov2_heads.checkpoints.errors import ArchitectureMismatchError, CheckpointError
from dinov2_heads.checkpoints.fit import check_fit
from dinov2_heads.checkpoints.folders import (
    CONFIG_NAME,
    CheckpointFiles,
    find_checkpoint_files,
    read_checkpoint_files,
)
from dinov2_heads.checkpoints.formats import CheckpointFormat, to_official
from dinov2_heads.checkpoints.heads_as_backbone import heads_as_backbone_error
from dinov2_heads.checkpoints.huggingface_config import (
    HuggingFaceConfig,
    check_huggingface_config,
    read_huggingface_config,
)
from dinov2_heads.checkpoints.nonfinite import nonfinite_names
from dinov2_heads.checkpoints.unwrap import unwrap_state_dict

logger = logging.getLogger(__name__)

#: A checkpoint path or an in-memory state dict (or a container around one).
CheckpointSource = str | os.PathLike[str] | Mapping[str, Any]

_SHOWN = 6

_PARTIAL_HINT = "load_partial(model, path) copies the tensors that fit and reports the rest"


@dataclass(frozen=True)
class BackboneWeights:
    """Backbone weights in the official layout and how they were obtained.

    Attributes:
        state_dict: Official names to tensors, as stored (dtype unchanged).
        format: The layout the weights came in.
        unwrapped: Containers and prefixes removed, step by step.
        set_aside: Parts stored next to the backbone and not loaded (projection heads,
            classifiers), under their names in the file.
        unexpected: Names that are not part of a DINOv2 backbone, after conversion.
        from_file: Whether the tensors were read from files.
        mapped: Whether they are memory-mapped views of the files (``mmap=True``).
        files: The files read, for a path; ``None`` for an in-memory mapping.
        huggingface_config: The DINOv2 ``config.json`` beside the weights of a model folder.
    """

    state_dict: dict[str, Tensor]
    format: CheckpointFormat
    unwrapped: tuple[str, ...] = ()
    set_aside: dict[str, Tensor] = field(default_factory=dict)
    unexpected: dict[str, Tensor] = field(default_factory=dict)
    from_file: bool = False
    mapped: bool = False
    files: CheckpointFiles | None = None
    huggingface_config: HuggingFaceConfig | None = None

    def infer_config(self, *, num_heads: int | None = None) -> BackboneConfig:
        """The architecture of the weights, checked against ``config.json`` when there is one.

        Args:
            num_heads: The head count; by default ``num_attention_heads`` of ``config.json``,
                else D / 64 (see below).

        The weights do not show the head count. Official and timm weights always have 64-wide
        heads (the convention of both codebases), so D / 64 is taken. Hugging Face weights keep
        it in ``config.json``; without one, D / 64 is taken only when D is the width of an official
        variant (384, 768, 1024 or 1536: a released model or some of its blocks), and any
        other width is refused: a custom Hugging Face model's heads need not be 64 wide, and a
        wrong count loads without an error and gives wrong outputs.

        Raises:
            ArchitectureMismatchError: ``config.json`` contradicts the weights.
            CheckpointError: The weights are not a complete backbone, or they are a custom
                Hugging Face model read without ``config.json`` and ``num_heads`` is not given.
        """
        hf = self.huggingface_config
        if hf is None and num_heads is None and self.format == "huggingface":
            self._refuse_unknown_head_count()
        stated = hf.num_heads if hf is not None else None
        if hf is not None and num_heads is not None and stated is not None and num_heads != stated:
            logger.warning(
                "num_heads=%d is used; %s says num_attention_heads=%d", num_heads, hf.path, stated
            )
        if hf is not None:
            # The shapes first: a head count that does not divide the width is named as such.
            check_huggingface_config(hf, infer_config(self.state_dict, num_heads=1))
        return infer_config(self.state_dict, num_heads=num_heads or stated)

    def _refuse_unknown_head_count(self) -> None:
        shapes = infer_config(self.state_dict, num_heads=1)
        width = shapes.embed_dim
        if width in {config.embed_dim for config in VARIANTS.values()}:
            return  # an official width (a released model, or fewer of its blocks): 64-wide heads
        guess = ""
        if width % HEAD_WIDTH == 0:
            guess = f", e.g. num_heads={width // HEAD_WIDTH} for 64-wide heads"
        if self.files is None:
            where, hint = "a state dict, which has no config.json", ""
        else:
            where = f"{_listed_files(self.files)} without a config.json"
            beside = self.files.folder / CONFIG_NAME
            if not beside.is_file():
                hint = "; or put the model's config.json beside the weights and pass the folder"
            elif self.files.source.is_dir():
                where = f"{_listed_files(self.files)} ({beside} is not a DINOv2 configuration)"
                hint = ""
            else:
                hint = f"; or pass the folder {self.files.folder}, whose config.json gives it"
        raise CheckpointError(
            f"the number of attention heads is unknown: a custom Hugging Face DINOv2 model "
            f"(D={width}, depth={shapes.depth}) was read from {where}. The weights do not "
            "show the head count, and a wrong one loads silently and gives wrong outputs. "
            f"Pass num_heads=... (the model's num_attention_heads{guess}){hint}"
        )


def read_backbone(
    source: CheckpointSource, *, mmap: bool = False, verify: bool = False
) -> BackboneWeights:
    """Read, unwrap, detect the layout and convert to official names.

    Args:
        source: A checkpoint path (a file, a model folder, a shard index, a Hugging Face cache
            repo or repo id, see :func:`~dinov2_heads.checkpoints.find_checkpoint_files`), or a
            state dict / container around one.
        mmap: Leave the tensors memory-mapped (views of the file); see
            :func:`~dinov2_heads.checkpoints.read_checkpoint_file`.
        verify: Check every checksum the files record first.

    Raises:
        UnknownFormatError: The names fit no backbone layout; a heads file written by
            ``save_heads`` or a released DINOv2 head file is named as such, with where it goes.
        CheckpointError: Anything wrong with the content (see :mod:`~dinov2_heads.checkpoints`).
        CheckpointFileError: The file cannot be opened.
    """
    files: CheckpointFiles | None = None
    hf: HuggingFaceConfig | None = None
    if isinstance(source, Mapping):
        content: Mapping[str, Any] = source
    else:
        files = find_checkpoint_files(source)
        content = read_checkpoint_files(files, mmap=mmap, verify=verify)
        hf = read_huggingface_config(files.config) if files.config is not None else None
    try:
        unwrapped = unwrap_state_dict(content)
        converted = to_official(unwrapped.state_dict)
    except CheckpointError:
        # Head files are the commonest thing given in a backbone's place: say which and where
        # they go instead of listing names that fit no layout.
        refusal = heads_as_backbone_error(content, files)
        if refusal is not None:
            raise refusal from None
        raise
    return BackboneWeights(
        state_dict=converted.state_dict,
        format=converted.format,
        unwrapped=unwrapped.steps,
        set_aside={**unwrapped.set_aside, **converted.set_aside},
        unexpected=converted.unexpected,
        from_file=files is not None,
        mapped=files is not None and mmap,
        files=files,
        huggingface_config=hf,
    )


def read_backbone_state_dict(source: CheckpointSource) -> dict[str, Tensor]:
    """A backbone state dict in the official layout, from a path or a mapping.

    Names that are not part of a backbone stay in, so a strict load reports them.
    """
    weights = read_backbone(source)
    _refuse_integer_weights(weights.state_dict)
    return {**weights.state_dict, **weights.unexpected}


def _refuse_integer_weights(state_dict: Mapping[str, Tensor]) -> None:
    # Every backbone weight is floating point; integer ones come from a quantised or damaged
    # file, and a load_state_dict would cast them into a silently wrong backbone.
    integers = [key for key, tensor in state_dict.items() if not tensor.is_floating_point()]
    if integers:
        dtypes = sorted({str(state_dict[key].dtype).removeprefix("torch.") for key in integers})
        raise CheckpointError(
            f"{len(integers)} backbone tensors are not floating point ({'/'.join(dtypes)}): "
            f"{', '.join(integers[:_SHOWN])}{', ...' if len(integers) > _SHOWN else ''}; "
            "a DINOv2 checkpoint stores float32, float16 or bfloat16 weights (quantised "
            "checkpoints must be dequantised first)"
        )


def load_backbone(
    source: CheckpointSource,
    *,
    variant: str | None = None,
    mmap: bool = False,
    verify: bool = False,
    **overrides: Any,
) -> DinoVisionTransformer:
    """Build the backbone that a checkpoint holds, with its weights, in eval mode.

    Width, depth, registers, FFN type, patch size and the position grid are read from the
    tensor shapes, so ``load_backbone("dinov2_vitl14_reg4_pretrain.pth")`` is the whole call. A
    depth or width that is not an official variant still loads (``model.variant`` is then
    ``None``, a custom architecture). Official, Hugging Face and timm layouts are converted.

    ``source`` may also be a model folder: a Hugging Face one (``save_pretrained``,
    ``huggingface-cli download``, sharded or not), its ``*.index.json``, a cache repo
    (``models--facebook--dinov2-base``), a Hugging Face repo id found in the local cache
    (``"facebook/dinov2-base"``; nothing is downloaded) or a folder holding a single checkpoint
    file; see :func:`~dinov2_heads.checkpoints.find_checkpoint_files`. Shards are merged. A
    ``config.json`` there gives the head count and is checked against the weights, which
    decide the architecture.

    The model owns its memory: each tensor is read from the file into memory of its own and
    becomes a parameter without a further copy (the model is built on the ``meta`` device), so
    a ViT-g needs about its size in RAM rather than twice it, and nothing of the file stays
    open: saving a new checkpoint under the same name later cannot change or crash the model.
    Half-precision weights are converted to float32.

    Args:
        source: A checkpoint path (file or folder), or a state dict / container around one
            (its tensors are copied, never shared with the model).
        variant: An official name (``"dinov2_vitb14_reg"``) to check the weights against; the
            error names both architectures when they differ. It also sets the head count,
            which the weights cannot tell (``config.json``'s ``num_attention_heads``, else
            D / 64, is used otherwise; see :meth:`BackboneWeights.infer_config`).
        mmap: Share the file's pages instead of copying them: the parameters are views of a
            private memory map of the file, read from disk when first used. Opening is faster
            and a file's pages are shared between processes, but the model stays tied to the
            file: rewriting the file in place (``torch.save`` to the same path, ``cp``,
            ``shutil.copyfile``) silently changes the live model, and truncating it kills the
            process with ``SIGBUS`` at the next forward. Use it only for files that nothing
            rewrites while the model lives (a read-only model store). Training the model never
            writes to the file.
        verify: Check every checksum the file records before loading (``torch.save`` writes a
            CRC-32 per tensor); a mismatch is a ``CheckpointError``. Reads the file once more.
        **overrides: :class:`~dinov2_heads.backbone.BackboneConfig` fields to change, e.g.
            ``num_heads=2`` for a custom model whose heads are not 64 wide.

    Returns:
        The backbone in eval mode, float32, on the CPU.

    Raises:
        ArchitectureMismatchError: ``variant`` or ``config.json`` disagrees with the weights,
            the weights hold names that a backbone does not have, or they do not fit the
            architecture (tensors missing or of another shape); see
            :func:`backbone_from_weights`.
        CheckpointError: The checkpoint cannot be read or is not a DINOv2 backbone; a heads
            file (``save_heads``) or a released head file is named as such, with where it
            goes (an :class:`UnknownFormatError`).
    """
    weights = read_backbone(source, mmap=mmap, verify=verify)
    if variant is None:
        config = weights.infer_config(num_heads=overrides.get("num_heads"))
    else:
        # The variant's architecture, at the position grid the weights were trained with.
        grid = infer_config(weights.state_dict, num_heads=1).img_size
        config = get_config(variant).replace(img_size=grid)
    model = backbone_from_weights(weights, config.replace(**overrides), asked=variant)
    logger.info(
        "loaded %s (%s layout): %s",
        model.variant or "a custom backbone",
        weights.format,
        describe_config(model.config),
    )
    return model


def backbone_from_weights(
    weights: BackboneWeights, config: BackboneConfig, *, asked: str | None = None
) -> DinoVisionTransformer:
    """The backbone of architecture ``config`` holding ``weights``, once they are checked to fit.

    The one strict load of the library (:func:`load_backbone` and
    :func:`~dinov2_heads.checkpoints.create_backbone` both end here). Weights read from a file
    become the parameters as they are (memory-mapped where the file allows); weights from a
    caller's mapping are copied. Half-precision weights become float32.

    Args:
        weights: What :func:`read_backbone` read.
        config: The architecture to build.
        asked: The variant name the caller asked for; the weights' architecture is then
            compared with ``config`` first, and a ``config.json`` beside them checked.

    Returns:
        The backbone in eval mode, on the CPU (on meta for meta weights).

    Raises:
        ArchitectureMismatchError: Names that a backbone does not have, an architecture other
            than ``asked``, or tensors that are missing or of another shape.
        CheckpointError: Weights that are not floating point, or not a complete backbone.
    """
    if weights.unexpected:
        names = list(weights.unexpected)
        raise ArchitectureMismatchError(
            f"the checkpoint holds {len(names)} tensors that a DINOv2 backbone does not have: "
            f"{', '.join(names[:_SHOWN])}{', ...' if len(names) > _SHOWN else ''}; to take the "
            "backbone part only, use load_partial(create_backbone(...), path)"
        )
    if asked is not None:
        found = infer_config(weights.state_dict, num_heads=1)
        if weights.huggingface_config is not None:
            check_huggingface_config(weights.huggingface_config, found)
        check_variant(found, asked, config)
    state_dict = _prepared(weights.state_dict, config_dtype=torch.get_default_dtype())
    with torch.device("meta"):
        model = DinoVisionTransformer(config)
    check_fit(
        model.state_dict(),
        state_dict,
        what=f"the weights do not fit {asked or 'the architecture'} ({describe_config(config)})",
        fix=f"{REBUILD_HINT}, or {_PARTIAL_HINT}" if asked is not None else _PARTIAL_HINT,
    )
    # Tensors read from a file become the parameters as they are (memory of their own, or views
    # of the file with mmap=True); a caller's mapping is copied so the two never share storage.
    if not weights.from_file:
        state_dict = {key: value.clone() for key, value in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def _prepared(state_dict: Mapping[str, Tensor], *, config_dtype: torch.dtype) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    cast: set[str] = set()
    _refuse_integer_weights(state_dict)
    nonfinite = nonfinite_names(state_dict)
    for key, tensor in state_dict.items():
        if tensor.dtype != config_dtype:
            cast.add(str(tensor.dtype).removeprefix("torch."))
            tensor = tensor.to(config_dtype)
        out[key] = tensor
    if nonfinite:
        logger.warning(
            "%d backbone tensors contain NaN or inf: %s%s",
            len(nonfinite),
            ", ".join(nonfinite[:_SHOWN]),
            ", ..." if len(nonfinite) > _SHOWN else "",
        )
    if cast:
        logger.info("converted %s weights to %s", "/".join(sorted(cast)), config_dtype)
    return out


def _listed_files(files: CheckpointFiles) -> str:
    names = [path.name for path in files.weights]
    return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
