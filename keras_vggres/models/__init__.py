"""Model builders: VGG and ResNet families."""

from keras_vggres.models.resnet import (ResNet18, ResNet34, ResNet50, ResNet50V2, ResNet101,
                                        ResNet101V2, ResNet152, ResNet152V2)
from keras_vggres.models.vgg import (VGG11, VGG11BN, VGG13, VGG13BN, VGG16, VGG16BN, VGG19,
                                     VGG19BN)

__all__ = ["VGG11", "VGG13", "VGG16", "VGG19", "VGG11BN", "VGG13BN", "VGG16BN", "VGG19BN",
           "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2",
           "ResNet101V2", "ResNet152V2"]
