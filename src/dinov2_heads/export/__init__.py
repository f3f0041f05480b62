"""Deployment: ONNX export (a backbone with heads, or a whole dense predictor), head checkpoints."""

from dinov2_heads.atomic import atomic_path, atomic_write_bytes
from dinov2_heads.export.dense_onnx import DenseExportGraph, export_dense_onnx, verify_dense_onnx
from dinov2_heads.export.heads_checkpoint import HeadCheckpoint, load_heads, save_heads
from dinov2_heads.export.heads_summary import HeadsFileSummary, describe_heads
from dinov2_heads.export.onnx import (
    ExportGraph,
    OnnxExport,
    export_onnx,
    verify_onnx,
)
from dinov2_heads.export.onnx_metadata import read_onnx_metadata
from dinov2_heads.export.output_layout import OutputLayout

__all__ = [
    "DenseExportGraph",
    "ExportGraph",
    "HeadCheckpoint",
    "HeadsFileSummary",
    "OnnxExport",
    "OutputLayout",
    "atomic_path",
    "atomic_write_bytes",
    "describe_heads",
    "export_dense_onnx",
    "export_onnx",
    "load_heads",
    "read_onnx_metadata",
    "save_heads",
    "verify_dense_onnx",
    "verify_onnx",
]
