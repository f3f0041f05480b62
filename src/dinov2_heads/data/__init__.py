"""Images in, without torchvision: loading, preprocessing, augmentation, datasets.

Pillow (the ``images`` extra) is imported only by the functions that read or draw images.
"""

from dinov2_heads.data._dataset import ImageDataset
from dinov2_heads.data.augment import (
    ColorJitter,
    RandomHorizontalFlip,
    RandomResizedCrop,
    TrainTransform,
)
from dinov2_heads.data.depth_dataset import DepthDataset
from dinov2_heads.data.depth_io import (
    DEPTH_SCALES,
    UnreadableDepthError,
    read_depth,
    write_depth_png,
)
from dinov2_heads.data.depth_transforms import DepthTransform, resize_pair
from dinov2_heads.data.folder import IMAGE_EXTENSIONS, ImageFolderDataset
from dinov2_heads.data.functional import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    check_valid_size,
    denormalize,
    grid_size,
    nearest_valid_size,
    normalize,
    pil_to_tensor,
    resize,
    resize_shorter_side,
    tensor_to_pil,
    to_float,
)
from dinov2_heads.data.joint_transforms import SegmentationTransform
from dinov2_heads.data.loading import (
    ImageBatch,
    OnError,
    SkippedImage,
    UnreadableImageError,
    check_images,
    load_batch,
    load_image,
)
from dinov2_heads.data.manifest import ManifestDataset, read_manifest
from dinov2_heads.data.masks import IGNORE_LABEL, load_mask
from dinov2_heads.data.preprocess import PRESETS, Preprocess, get_preset, list_presets
from dinov2_heads.data.segmentation import SegmentationDataset
from dinov2_heads.labels import MISSING_LABEL

__all__ = [
    "DEPTH_SCALES",
    "IGNORE_LABEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "MISSING_LABEL",
    "PRESETS",
    "ColorJitter",
    "DepthDataset",
    "DepthTransform",
    "ImageBatch",
    "ImageDataset",
    "ImageFolderDataset",
    "ManifestDataset",
    "OnError",
    "Preprocess",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "SegmentationDataset",
    "SegmentationTransform",
    "SkippedImage",
    "TrainTransform",
    "UnreadableDepthError",
    "UnreadableImageError",
    "center_crop",
    "check_images",
    "check_valid_size",
    "denormalize",
    "get_preset",
    "grid_size",
    "list_presets",
    "load_batch",
    "load_image",
    "load_mask",
    "nearest_valid_size",
    "normalize",
    "pil_to_tensor",
    "read_depth",
    "read_manifest",
    "resize",
    "resize_pair",
    "resize_shorter_side",
    "tensor_to_pil",
    "to_float",
    "write_depth_png",
]
