"""The built-in demo: a synthetic vehicles set and the whole job run on it, offline.

``SyntheticVehicles`` draws small labelled vehicle images with no files and no downloads;
:func:`run_demo` extracts features with a frozen backbone, trains heads on them and reports
held-out accuracy (``dinov2-heads demo`` on the command line).
"""

from dinov2_heads.demo.depth_pairs import SyntheticDepthPairs
from dinov2_heads.demo.drawing import PART_PALETTE, PARTS
from dinov2_heads.demo.run import RANDOM_BACKBONE, DemoResults, HeadResult, run_demo
from dinov2_heads.demo.synthetic import (
    ATTRIBUTES,
    BODY_TYPES,
    BRANDS,
    COLOURS,
    ORIENTATIONS,
    SyntheticVehicleParts,
    SyntheticVehicles,
    Vehicle,
)

__all__ = [
    "ATTRIBUTES",
    "BODY_TYPES",
    "BRANDS",
    "COLOURS",
    "ORIENTATIONS",
    "PARTS",
    "PART_PALETTE",
    "RANDOM_BACKBONE",
    "DemoResults",
    "HeadResult",
    "SyntheticDepthPairs",
    "SyntheticVehicleParts",
    "SyntheticVehicles",
    "Vehicle",
    "run_demo",
]
