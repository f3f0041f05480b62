"""``FrozenBackbone``: a backbone that is never trained, turned into :class:`Features`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from dinov2_heads import accel
from dinov2_heads.accel.conditions import runs_fast
from dinov2_heads.accel.fallback import failures_summarised
from dinov2_heads.backbone import DinoVisionTransformer
from dinov2_heads.backbone.vision_transformer import check_finite_images, check_float_images
from dinov2_heads.data.functional import IMAGENET_MEAN, IMAGENET_STD, check_mean_std, normalize
from dinov2_heads.features.features import BlockKey, BlockTokens, Features

logger = logging.getLogger(__name__)

_STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BACKBONE_PREFIX = "backbone."

# (class tokens, patch tokens, register tokens) as the compiled or eager extraction returns them.
_Tokens = tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor | None]
# The last-n tokens, then (class, patches) of each further block in FrozenBackbone.blocks order.
_AllTokens = tuple[_Tokens, tuple[BlockTokens, ...]]

#: What ``FrozenBackbone(blocks=...)`` takes per block: an index (normed) or (index, norm).
BlockRequest = int | tuple[int, bool]


class FrozenBackbone(nn.Module):
    """A frozen backbone that turns images (B, 3, H, W) into :class:`Features`.

    Images are either float, already normalised with the mean and std the backbone was trained
    with (what :class:`~dinov2_heads.data.Preprocess` gives), or ``uint8``: decoded pixels
    0..255 (what ``Preprocess(..., normalize=False)`` gives), which are normalised here, with
    ``mean`` and ``std``, on the backbone's device. A ``uint8`` batch elsewhere (the CPU batch
    of a ``DataLoader``) is copied to that device as ``uint8`` first, a quarter of the bytes of
    float32, and converted there (float images must already be there); the features are those
    of the float path (bit for bit on the CPU). Other integer images are refused, never cast.

    Safe to put inside a trainable model: its parameters never require gradients, it stays in
    eval mode whatever ``.train()`` is called on a parent, and it runs under ``torch.no_grad()``
    (not ``inference_mode``), so its outputs feed trainable heads without the "Inference tensors
    cannot be saved for backward" error.

    Its state dict keys are the backbone's own, without a prefix, so an official
    ``dinov2_vits14_pretrain.pth`` state dict loads with ``frozen.load_state_dict(sd)``, and
    checkpoints of a model holding it (``{"frozen.blocks.0.norm1.weight": ...}``) look like the
    backbone's. Parameters are still reached as ``frozen.backbone.<name>`` in Python.

    Args:
        backbone: Any module with the official ``get_intermediate_layers`` (our
            :class:`~dinov2_heads.DinoVisionTransformer` or the official ``dinov2`` model),
            with ``embed_dim`` and ``patch_size`` attributes.
        n_last_blocks: How many of the last blocks to return (4 for the official linear4 heads).
        blocks: Further blocks for dense heads, returned in :attr:`Features.blocks` by the same
            backbone pass: ``(index, norm)`` pairs, or plain ints meaning ``norm=True``. Indices
            are 0-based, negative ones count from the end; ``norm`` says whether the final
            LayerNorm is applied. Class token and patch tokens are kept (registers dropped
            from the patches). :meth:`for_heads` works this out from the heads.
        dtype: Store the frozen weights in this dtype once (``torch.bfloat16`` or
            ``torch.float16``) instead of autocasting on every call; inputs are cast to it and
            features come out as float32. ``None`` keeps the backbone's dtype. On a GPU this,
            uncompiled and accelerated, is the fastest way to run the backbone.
        compile: ``True`` compiles the token extraction with ``torch.compile``. The batch
            dimension is dynamic, so a new batch size does not recompile; the first image size
            is compiled as is, and a second size compiles one graph with dynamic height and
            width that serves every later size (two compilations in all). A mapping is passed to
            ``torch.compile`` as keyword arguments (for example ``{"mode": "max-autotune"}``).
        accelerate: On the first batch on a GPU, swap the backbone's modules for the faster
            ones of :mod:`dinov2_heads.accel` (:func:`~dinov2_heads.accel.accelerate`, once, in
            place; the state dict does not change). ``False`` keeps PyTorch's plain kernels,
            for instance for the exact GELU in reduced precision. CPU runs never take them,
            and ``compile`` does not swap them in; a backbone accelerated beforehand with
            ``accelerate(backbone, compiled_kernels=True)`` keeps its Triton kernels in the
            compiled graph.
        check_finite: Refuse images that hold NaN or infinity (a ``ValueError`` naming the
            samples), at the cost of one reduction over each batch; ``False`` lets them
            through, and every feature of such an image is NaN. (``uint8`` pixels are always
            finite, so they skip it.)
        mean: Per-channel mean (RGB), in [0, 1] units, that ``uint8`` pixels are normalised
            with after scaling to [0, 1]: ImageNet's by default, as every DINOv2 checkpoint was
            trained with. Float images are taken as they come.
        std: Per-channel standard deviation (RGB) that ``uint8`` pixels are divided by.

    Example:
        >>> from dinov2_heads import create_backbone
        >>> frozen = FrozenBackbone(create_backbone("dinov2_vits14", depth=1), n_last_blocks=1)
        >>> frozen(torch.randn(2, 3, 28, 42)).grid
        (2, 3)
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        n_last_blocks: int = 1,
        blocks: Iterable[BlockRequest] = (),
        dtype: torch.dtype | None = None,
        compile: bool | Mapping[str, Any] = False,
        accelerate: bool = True,
        check_finite: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone, "get_intermediate_layers", None)):
            raise TypeError(
                f"FrozenBackbone needs a backbone with the official get_intermediate_layers "
                f"method, got {type(backbone).__name__}; build one with "
                "dinov2_heads.create_backbone(...) or pass the official DINOv2 model"
            )
        embed_dim = getattr(backbone, "embed_dim", None)
        patch_size = getattr(backbone, "patch_size", None)
        if not isinstance(embed_dim, int) or not isinstance(patch_size, int):
            raise TypeError(
                f"FrozenBackbone needs int backbone.embed_dim and backbone.patch_size, "
                f"{type(backbone).__name__} has {embed_dim!r} and {patch_size!r}"
            )
        if isinstance(n_last_blocks, bool) or not isinstance(n_last_blocks, int):
            raise TypeError(f"n_last_blocks must be an int, got {n_last_blocks!r}")
        depth = _depth(backbone)
        if n_last_blocks < 1 or (depth is not None and n_last_blocks > depth):
            limit = f"the depth {depth}" if depth is not None else "the backbone's depth"
            raise ValueError(f"n_last_blocks must be between 1 and {limit}, got {n_last_blocks}")
        if dtype is not None and dtype not in _STORAGE_DTYPES:
            raise ValueError(
                f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype}"
            )
        if not isinstance(compile, bool | Mapping):
            raise TypeError(
                f"compile must be a bool or a mapping of torch.compile options, got {compile!r}"
            )
        if not isinstance(accelerate, bool):
            raise TypeError(f"accelerate must be True or False, got {accelerate!r}")
        #: The (R, G, B) mean and std that ``uint8`` images are normalised with.
        self.mean, self.std = check_mean_std(mean, std)
        # The same as float32 tensors, per device: made once, since building them from
        # numbers copies to the device and, on a GPU, waits for it on every call.
        self._mean_std: dict[torch.device, tuple[Tensor, Tensor]] = {}

        requested = _resolve_blocks(blocks, depth)

        self.backbone = backbone
        self.n_last_blocks = n_last_blocks
        self.depth = depth
        #: The requested blocks as sorted (absolute index, norm) pairs.
        self.blocks: tuple[BlockKey, ...] = requested
        # Requested blocks that the last-n normed tuple does not already hold.
        self._extra_blocks: tuple[BlockKey, ...] = tuple(
            key
            for key in requested
            if not (key[1] and depth is not None and key[0] >= depth - n_last_blocks)
        )
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.check_finite = check_finite
        backbone.requires_grad_(False)
        if dtype is not None:
            backbone.to(dtype)
        self._compile_options: dict[str, Any] | None = (
            (dict(compile) if isinstance(compile, Mapping) else {}) if compile else None
        )
        self._compiled: Callable[[Tensor], _AllTokens] | None = None
        self._first_grid: tuple[int, int] | None = None
        self._accelerate_pending = accelerate and self._compile_options is None
        self.register_state_dict_post_hook(_strip_backbone_prefix)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_add_backbone_prefix)  # type: ignore[no-untyped-call]
        self.train(False)

    @classmethod
    def for_heads(
        cls,
        backbone: nn.Module,
        heads: nn.Module | Mapping[str, nn.Module] | Iterable[nn.Module],
        **kwargs: Any,
    ) -> FrozenBackbone:
        """A ``FrozenBackbone`` whose one pass serves every head in ``heads``.

        Each head that defines ``required_blocks(depth)`` (the dense heads, and
        :class:`~dinov2_heads.heads.MultiHead` for all of its heads) gets those blocks;
        ``n_last_blocks`` grows to the largest ``n_blocks`` of the classifier heads, and to
        cover normed blocks that run up to the last one (so a feature cache or an ONNX export,
        which keep the last blocks, serve those heads too).

        Args:
            backbone: As for the constructor.
            heads: One head, a ``MultiHead``, a mapping of names to heads or a list of heads.
            **kwargs: Other constructor arguments (``dtype``, ``compile``; ``n_last_blocks``
                and ``blocks`` are the least to take, added to what the heads need).
        """
        depth = _depth(backbone)
        leaves = _leaf_heads(heads)
        requests: list[BlockRequest] = list(kwargs.pop("blocks", ()))
        n_last_blocks = kwargs.pop("n_last_blocks", 1)
        for head in leaves:
            required = getattr(head, "required_blocks", None)
            if callable(required):
                if depth is None:
                    raise ValueError(
                        f"{type(head).__name__} needs chosen blocks of the backbone, but the "
                        f"depth of {type(backbone).__name__} is unknown (no n_blocks or "
                        "blocks attribute); pass FrozenBackbone(backbone, blocks=...) yourself"
                    )
                requests.extend(required(depth))
            n_blocks = getattr(head, "n_blocks", None)
            if isinstance(n_blocks, int) and not isinstance(n_blocks, bool):
                n_last_blocks = max(n_last_blocks, n_blocks)
        if depth is not None:
            # Normed blocks that run up to the last one are taken as last blocks: the same
            # tokens, and what feature caches and ONNX export keep.
            normed = {index for index, norm in _resolve_blocks(requests, depth) if norm}
            run = 0
            while depth - 1 - run in normed:
                run += 1
            n_last_blocks = max(n_last_blocks, min(run, depth))
        return cls(backbone, n_last_blocks=n_last_blocks, blocks=requests, **kwargs)

    def serves(self, required: Iterable[BlockKey]) -> tuple[BlockKey, ...]:
        """The blocks of ``required`` (absolute (index, norm) pairs) this backbone lacks."""
        held = set(self.blocks)
        if self.depth is not None:
            held.update((self.depth - 1 - i, True) for i in range(self.n_last_blocks))
        return tuple(key for key in required if key not in held)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the frozen weights are stored in (inputs are cast to it)."""
        for param in self.backbone.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.get_default_dtype()

    @property
    def num_register_tokens(self) -> int:
        """R, the number of register tokens the backbone has (0 when none)."""
        return int(getattr(self.backbone, "num_register_tokens", 0) or 0)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Stay in eval mode: a frozen backbone has no train-time behaviour to switch on."""
        return super().train(False)

    def forward(self, x: Tensor) -> Features:
        """Features of the last ``n_last_blocks`` blocks.

        Args:
            x: Images (B, 3, H, W) with H and W multiples of the patch size: normalised
                floats, or ``uint8`` pixels 0..255 that are normalised here with
                :attr:`mean` and :attr:`std` (see the class docstring).

        Returns:
            :class:`Features` in float32: ``class_tokens`` n x (B, D), ``patch_tokens``
            n x (B, N, D), ``patch_mean`` (B, D), ``register_tokens`` (B, R, D) when the backbone
            is a :class:`~dinov2_heads.DinoVisionTransformer` with registers, and the grid (h, w).
        """
        x = self.prepare_images(x)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if self._accelerate_pending and runs_fast(x):
            accel.accelerate(self.backbone)
            self._accelerate_pending = False
        with torch.no_grad():
            if self._compile_options is not None:
                self._mark_dynamic(x, grid)
                tokens, extra = self._compiled_tokens()(x)
            else:
                # One warning per cause for kernels that fail anywhere in the pass, the final
                # norm applied here included.
                with failures_summarised():
                    tokens, extra = self._all_tokens(x)
        class_tokens, patch_tokens, registers = tokens
        return Features.from_tokens(
            [t.float() for t in class_tokens],
            [t.float() for t in patch_tokens],
            grid,
            register_tokens=registers.float() if registers is not None else None,
            blocks={
                key: (c.float(), p.float())
                for key, (c, p) in zip(self._extra_blocks, extra, strict=True)
            },
            depth=self.depth,
        )

    def prepare_images(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) as the backbone takes them, checked, in :attr:`dtype`.

        ``uint8`` pixels 0..255 are moved to the backbone's device (as ``uint8``), converted
        and normalised there with :attr:`mean` and :attr:`std` in float32, then cast; float
        images are checked (device, size, finite values when ``check_finite``) and cast.

        Raises:
            TypeError: Integer images other than ``uint8``.
            ValueError: Not a (B, 3, H, W) tensor, empty images, float images on another
                device than the weights, or non-finite values.
        """
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"expected images of shape (B, 3, H, W), got {shape}; "
                "add a batch dimension with x.unsqueeze(0) for one image"
            )
        weights = next(self.backbone.parameters(), None)
        pixels = x.dtype == torch.uint8
        check_image_dtype(x, "FrozenBackbone", self.mean, self.std)
        if pixels:
            x = self.normalize_pixels(x)
        # Float from here on: the device and size checks every entry point makes. Before the
        # cast below, so that no integer image is ever cast to float unnormalised.
        check_float_images(x, weights=weights)
        if self.check_finite and not pixels:
            check_finite_images(x)
        return x.to(self.dtype)

    def normalize_pixels(self, x: Tensor) -> Tensor:
        """``uint8`` pixels (B, 3, H, W) 0..255 as float32 images normalised on the device.

        The pixels are moved to the backbone's device as ``uint8`` (a quarter of float32's
        bytes), converted there to [0, 1] and normalised with :attr:`mean` and :attr:`std` in
        float32: the function :func:`~dinov2_heads.data.normalize` that a ``Preprocess``
        applies, so on the CPU the result equals its, bit for bit. Nothing is cast to the
        weights' dtype (:meth:`prepare_images` does that), so a caller may still pad, flip or
        rescale the normalised images in float32, as :class:`~dinov2_heads.dense.Segmenter`
        and :class:`~dinov2_heads.dense.Depther` do.

        Raises:
            TypeError: ``x`` is not ``uint8``.
        """
        if x.dtype != torch.uint8:
            raise TypeError(
                f"normalize_pixels takes uint8 pixels 0..255, got {x.dtype}; float images are "
                "normalised already and go to the backbone as they are"
            )
        weights = next(self.backbone.parameters(), None)
        if weights is not None and x.device != weights.device and not x.is_meta:
            # The copy moves a quarter of float32's bytes; pinned memory makes it
            # asynchronous (a copy from the CPU is safe to issue so).
            x = x.to(weights.device, non_blocking=x.device.type == "cpu")
        return normalize(x, *self._normalization(x.device))

    def _normalization(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """:attr:`mean` and :attr:`std` as float32 (3,) tensors on ``device``."""
        if device not in self._mean_std:
            self._mean_std[device] = (
                torch.tensor(self.mean, dtype=torch.float32, device=device),
                torch.tensor(self.std, dtype=torch.float32, device=device),
            )
        return self._mean_std[device]

    def extra_repr(self) -> str:
        blocks = f", blocks={list(self.blocks)}" if self.blocks else ""
        return (
            f"n_last_blocks={self.n_last_blocks}{blocks}, dtype={self.dtype}, "
            f"mean={self.mean}, std={self.std}"
        )

    # ------------------------------------------------------------------ internals

    def _mark_dynamic(self, x: Tensor, grid: tuple[int, int]) -> None:
        # A dynamic batch dimension from the first call on: one graph serves every batch size
        # (B = 1 aside, which torch specialises once). The first image size is compiled static,
        # the fastest code for the common single-size run; the first other size compiles one
        # graph with dynamic height and width, which then serves every size.
        torch._dynamo.maybe_mark_dynamic(x, 0)
        if self._first_grid is None:
            self._first_grid = grid
        elif grid != self._first_grid:
            torch._dynamo.maybe_mark_dynamic(x, 2)
            torch._dynamo.maybe_mark_dynamic(x, 3)

    def _compiled_tokens(self) -> Callable[[Tensor], _AllTokens]:
        if self._compiled is None:
            logger.info(
                "compiling the frozen backbone with %s", self._compile_options or "defaults"
            )
            self._compiled = torch.compile(self._all_tokens, **(self._compile_options or {}))
        return self._compiled

    def _all_tokens(self, x: Tensor) -> _AllTokens:
        if not self._extra_blocks:
            return self._tokens(x), ()
        return _tokens_and_blocks(self.backbone, x, self.n_last_blocks, self._extra_blocks)

    def _tokens(self, x: Tensor) -> _Tokens:
        if isinstance(self.backbone, DinoVisionTransformer):
            return _tokens_with_registers(self.backbone, x, self.n_last_blocks)
        get_intermediate_layers = cast(Callable[..., Any], self.backbone.get_intermediate_layers)
        outputs = get_intermediate_layers(x, n=self.n_last_blocks, return_class_token=True)
        return tuple(c for _, c in outputs), tuple(p for p, _ in outputs), None


def check_image_dtype(x: Tensor, who: str, mean: Sequence[float], std: Sequence[float]) -> None:
    """The one check of the image dtype every entry point that takes ``uint8`` pixels shares.

    Float images (normalised) and ``uint8`` images (decoded pixels 0..255, normalised by the
    model with ``mean`` and ``std``) pass; any other dtype is refused, never cast.

    Args:
        x: Images.
        who: The class the images were given to, named in the message.
        mean: The mean ``uint8`` pixels are normalised with, named in the message.
        std: The standard deviation, likewise.

    Raises:
        TypeError: Integer (or boolean) images other than ``uint8``.
    """
    if x.dtype == torch.uint8 or x.is_floating_point():
        return
    raise TypeError(
        f"{who} takes float images normalised with mean {tuple(mean)} and std {tuple(std)}, "
        f"or uint8 images (decoded pixels 0..255, normalised here with that mean and std), "
        f"got {x.dtype}; pass pixels as images.to(torch.uint8) when they are 0..255, or "
        "normalise them with dinov2_heads.data.normalize(images)"
    )


def _tokens_with_registers(model: DinoVisionTransformer, x: Tensor, n: int) -> _Tokens:
    # get_intermediate_layers drops the register tokens; the full sequences keep them, in the
    # official order [class, registers (R), patches (N)].
    outputs = model.get_intermediate_tokens(x, n)
    r = model.num_register_tokens
    return (
        tuple(out[:, 0] for out in outputs),
        tuple(out[:, 1 + r :] for out in outputs),
        outputs[-1][:, 1 : 1 + r] if r else None,
    )


def _tokens_and_blocks(
    backbone: nn.Module, x: Tensor, n: int, extra: tuple[BlockKey, ...]
) -> _AllTokens:
    """The last ``n`` normed blocks and the ``extra`` blocks, from one pass through the blocks."""
    depth = _depth(backbone)
    assert depth is not None  # negative or absolute indices were resolved against it
    last = list(range(depth - n, depth))
    wanted = sorted({*last, *(index for index, _ in extra)})
    if isinstance(backbone, DinoVisionTransformer):
        r = backbone.num_register_tokens
        raw = dict(
            zip(wanted, backbone.get_intermediate_tokens(x, wanted, norm=False), strict=True)
        )
        # The same final norm get_intermediate_layers(norm=True) applies.
        normed = {i: backbone.norm(raw[i]) for i in last}
        normed.update({i: backbone.norm(raw[i]) for i, norm in extra if norm})
        tokens: _Tokens = (
            tuple(normed[i][:, 0] for i in last),
            tuple(normed[i][:, 1 + r :] for i in last),
            normed[last[-1]][:, 1 : 1 + r] if r else None,
        )
        blocks = tuple(
            ((normed if norm else raw)[i][:, 0], (normed if norm else raw)[i][:, 1 + r :])
            for i, norm in extra
        )
        return tokens, blocks
    # Another backbone (the official model): only get_intermediate_layers is known. Blocks
    # are taken without the norm, and its final norm (per token) is applied here when it has
    # one; otherwise a second call asks for the normed ones.
    get_intermediate_layers = cast(Callable[..., Any], backbone.get_intermediate_layers)
    outputs = get_intermediate_layers(x, n=wanted, return_class_token=True, norm=False)
    raw_pairs = {i: (c, p) for i, (p, c) in zip(wanted, outputs, strict=True)}
    final_norm = getattr(backbone, "norm", None)
    normed_indices = sorted({*last, *(i for i, norm in extra if norm)})
    if isinstance(final_norm, nn.Module):
        normed_pairs = {
            i: (final_norm(raw_pairs[i][0]), final_norm(raw_pairs[i][1])) for i in normed_indices
        }
    else:
        again = get_intermediate_layers(x, n=normed_indices, return_class_token=True, norm=True)
        normed_pairs = {i: (c, p) for i, (p, c) in zip(normed_indices, again, strict=True)}
    tokens = (
        tuple(normed_pairs[i][0] for i in last),
        tuple(normed_pairs[i][1] for i in last),
        None,
    )
    return tokens, tuple((normed_pairs if norm else raw_pairs)[i] for i, norm in extra)


def _resolve_blocks(blocks: Iterable[BlockRequest], depth: int | None) -> tuple[BlockKey, ...]:
    """Sorted, distinct (absolute index, norm) pairs, with one clear error per mistake."""
    if isinstance(blocks, str | bytes) or not isinstance(blocks, Iterable):
        raise TypeError(
            f"blocks must be a sequence of block indices or (index, norm) pairs, got {blocks!r}"
        )
    resolved: set[BlockKey] = set()
    for entry in blocks:
        if isinstance(entry, int) and not isinstance(entry, bool):
            index, norm = entry, True
        elif (
            isinstance(entry, Sequence)
            and len(entry) == 2
            and isinstance(entry[0], int)
            and not isinstance(entry[0], bool)
            and isinstance(entry[1], bool)
        ):
            index, norm = entry[0], entry[1]
        else:
            raise TypeError(
                f"each entry of blocks must be a block index or an (index, norm) pair such as "
                f"(-1, True), got {entry!r}"
            )
        if depth is None:
            if index < 0:
                raise ValueError(
                    f"block {index} counts from the end, but the backbone's depth is unknown "
                    "(no n_blocks or blocks attribute); pass absolute block indices"
                )
        elif not -depth <= index < depth:
            raise ValueError(
                f"block {index} is out of range for a backbone of depth {depth}; use 0 to "
                f"{depth - 1}, or -{depth} to -1 from the end"
            )
        resolved.add((index % depth if depth is not None else index, norm))
    return tuple(sorted(resolved))


def _leaf_heads(heads: Any) -> list[nn.Module]:
    """The heads inside one head, a MultiHead / ModuleDict, a mapping or a list of heads."""
    if isinstance(heads, nn.ModuleDict | Mapping):
        return [leaf for head in heads.values() for leaf in _leaf_heads(head)]
    if isinstance(heads, nn.Module):
        return [heads]
    if isinstance(heads, Iterable) and not isinstance(heads, str | bytes):
        return [leaf for head in heads for leaf in _leaf_heads(head)]
    raise TypeError(
        f"heads must be a head, a MultiHead, a mapping of names to heads or a list of heads, "
        f"got {type(heads).__name__}"
    )


def _depth(backbone: nn.Module) -> int | None:
    depth = getattr(backbone, "n_blocks", None)
    if isinstance(depth, int):
        return depth
    blocks = getattr(backbone, "blocks", None)
    return len(blocks) if isinstance(blocks, nn.ModuleList) else None


def _strip_backbone_prefix(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    # The backbone's keys were just appended last, so re-inserting them keeps the order.
    inner = prefix + _BACKBONE_PREFIX
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_backbone_prefix(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    # load_state_dict hands each module its own copy of the dict, so renaming in place is safe.
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + _BACKBONE_PREFIX + key[len(prefix) :]] = state_dict.pop(key)
