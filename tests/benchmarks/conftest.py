from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


STAND_IN = '''
"""A stand-in for the official dinov2.models.vision_transformer, built on the native model."""
from dinov2_heads import DinoVisionTransformer as _Native


def DinoVisionTransformer(*, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                          init_values, ffn_layer, block_chunks, num_register_tokens,
                          interpolate_antialias, interpolate_offset):
    assert block_chunks == 0
    return _Native(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                   num_heads=num_heads, mlp_ratio=mlp_ratio, init_values=init_values,
                   ffn_layer=ffn_layer, num_register_tokens=num_register_tokens,
                   interpolate_antialias=interpolate_antialias,
                   interpolate_offset=interpolate_offset)
'''


def write_stand_in_checkout(root: Path) -> Path:
    """A directory laid out like a dinov2 checkout whose model is the native one."""
    package = root / "dinov2"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "vision_transformer.py").write_text(STAND_IN)
    return root
