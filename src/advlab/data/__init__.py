"""Datasets for advlab: ImageNet-style folders and label files, the paper's class selection, a default sample,
Fashion-MNIST and CIFAR-10/100.

Image datasets yield ``(image, label, index)``: a float tensor in [0, 1] (no normalisation: advlab models
normalise inside), the class index, and the item's stable index in the dataset. See docs/models_data.md.
"""

from advlab.data.cifar import CIFAR, download_cifar
from advlab.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from advlab.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from advlab.data.imagenet import (
    IMAGE_EXTENSIONS,
    ImageList,
    ImageNetClasses,
    ImageNetFolder,
    LabelledImages,
    LabelsFileDataset,
    collate_skip,
    imagenet_class_names,
    imagenet_classes,
    iter_batches,
    make_loader,
    read_image,
    to_rgb,
)
from advlab.data.loading import image_shape, load_dataset
from advlab.data.sample import DefaultSample, default_sample
from advlab.data.sampling import sample_dataset, stratified_indices
from advlab.data.subset import LimitedDataset, SubsetDataset, farthest_point_classes, select_subset
from advlab.data.transforms import make_transform, transform_for

__all__ = [
    "CIFAR",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "DefaultSample",
    "FashionMNIST",
    "ImageList",
    "ImageNetClasses",
    "ImageNetFolder",
    "LabelledImages",
    "LabelsFileDataset",
    "LimitedDataset",
    "SubsetDataset",
    "collate_skip",
    "default_sample",
    "download_cifar",
    "farthest_point_classes",
    "image_shape",
    "imagenet_class_names",
    "imagenet_classes",
    "iter_batches",
    "load_dataset",
    "load_fashion_mnist",
    "make_loader",
    "make_transform",
    "read_image",
    "sample_dataset",
    "select_subset",
    "stratified_indices",
    "to_rgb",
    "transform_for",
]
