"""Model zoo: CIFAR ResNet-20/32/56/110 and VGG-16, torchvision ResNet-18/50 and MobileNetV2.

Build any of them by name with `create`; `list_models` shows the names and `default_input_size` the
input each is designed for.
"""

# Importing the model modules registers their builders.
from .cifar_resnet import CifarResNet
from .registry import create, default_input_size, list_models, register_model
from .vgg import VGG

__all__ = ["CifarResNet", "VGG", "create", "default_input_size", "list_models", "register_model"]
