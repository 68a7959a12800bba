"""The tiny synthetic task and models: enough to train a model in seconds, shared by the fixtures and the tests."""

from __future__ import annotations

# A small synthetic task: 32x32 images, a few hundred cases; enough to train tiny models in seconds.
TINY_DATA = "synthetic?size=32&n_train=192&n_val=32&n_test=96&seed=3"
TINY_TEACHER = "timm:medfm_resnet10_w16"
TINY_STUDENT = "timm:medfm_resnet10_w16"

# The tiny segmentation task (label maps: background, lung, heart and the lesions) and small smp networks.
TINY_SEG_DATA = "synthetic?task=segmentation&size=32&n_train=96&n_val=16&n_test=48&seed=3"
TINY_SEG_TEACHER = "smp:Unet:tu-medfm_resnet10_w16"
TINY_SEG_STUDENT = "smp:Linknet:tu-medfm_resnet10_w16"

# The tiny regression task: the same images, each with its lesion's area in percent of the image as the target.
TINY_REG_DATA = "synthetic?task=regression&size=32&n_train=192&n_val=32&n_test=96&seed=3"
