"""Offline readers for CIFAR-10, STL-10, Fashion-MNIST and image-folder trees, and the resolver that
finds them (--data-root, $BENCH_DATA, well-known places, the decoded-array cache, an opt-in download)."""

from bench.datasets.readers import (
    CLASS_NAMES,
    IMAGE_SIZE,
    ImageSet,
    arrays_sha256,
    iter_tar_images,
    read_cifar10_batches,
    read_fashion_mnist_idx,
    read_idx,
    read_image_folder,
    read_stl10_binary,
    resize_images,
)
from bench.datasets.resolve import DATASETS, ENV_VAR, WELL_KNOWN, cache_entries, resolve_dataset

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "ENV_VAR",
    "IMAGE_SIZE",
    "WELL_KNOWN",
    "ImageSet",
    "arrays_sha256",
    "cache_entries",
    "iter_tar_images",
    "read_cifar10_batches",
    "read_fashion_mnist_idx",
    "read_idx",
    "read_image_folder",
    "read_stl10_binary",
    "resize_images",
    "resolve_dataset",
]
