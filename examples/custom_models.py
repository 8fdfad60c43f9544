"""Bring your own model: factories usable as ``model: examples.custom_models:<factory>`` in a config.

A factory is any callable ``factory(input_shape, num_classes)`` returning a framework model, where
``input_shape`` is ``(H, W, C)`` and ``num_classes`` the number of classes. The backend seeds the
framework's random generators before calling it, so initialisation is reproducible.

* torch: return a ``torch.nn.Module`` taking float32 NCHW tensors in [0, 1] and returning logits.
* tensorflow: return a ``keras.Model`` taking float32 NHWC inputs in [0, 1]; end it in a softmax (or
  return logits: the backend looks at the last layer). Name the layers to get readable weight names.

The module must be importable where the train, evaluate and aggregate steps run: install it in the step
image (``pip install``) or put its directory on ``PYTHONPATH`` (``examples`` here is a namespace package
under the repository root). Import the framework inside the factory, as below, so that a torch process
never loads TensorFlow and vice versa.
"""

from __future__ import annotations

from typing import Any


def torch_tiny_cnn(input_shape: tuple[int, int, int], num_classes: int) -> Any:
    """A small torch CNN: one 3x3 conv block (8 channels), global average pooling, a linear head."""
    from torch import nn

    _, _, channels = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def keras_tiny_cnn(input_shape: tuple[int, int, int], num_classes: int) -> Any:
    """The Keras twin of :func:`torch_tiny_cnn`, ending in a softmax."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(num_classes, activation="softmax", name="classifier"),
        ],
        name="tiny_cnn",
    )
