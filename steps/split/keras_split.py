"""Keras halves of a split model: same interface as :mod:`steps.split.torch_split` (NHWC activations).

The full model is a ``keras.Sequential``; the bottom and top halves are new ``Sequential`` models over
the full model's own layers, so their weights carry the full model's names (``conv1/kernel``) and
``bottom ∪ top`` loads into the full model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from argofl.steps.frameworks.base import FrameworkError, TrainingDiverged, scale_images
from argofl.steps.frameworks.keras_backend import _outputs_probabilities, keras, tf

__all__ = ["KerasBottom", "KerasTop", "activation_shape", "build_halves", "split_model"]


def split_model(model: Any, cut: str) -> tuple[Any, Any]:
    """``(bottom, top)`` halves of a sequential Keras ``model`` cut after layer ``cut``."""
    if not isinstance(model, keras.Sequential):
        raise FrameworkError(
            f"split learning needs a keras.Sequential model with named layers, got {type(model).__name__}"
        )
    names = [layer.name for layer in model.layers]
    if cut not in names or cut == names[-1]:
        raise FrameworkError(
            f"split.cut={cut!r} is not a layer that leaves a top half: expected one of {names[:-1]}"
        )
    at = names.index(cut) + 1
    bottom = keras.Sequential(
        [keras.Input(model.input_shape[1:]), *model.layers[:at]], name=f"{model.name}_bottom"
    )
    top = keras.Sequential(
        [keras.Input(bottom.output_shape[1:]), *model.layers[at:]], name=f"{model.name}_top"
    )
    top.ends_in_softmax = _outputs_probabilities(model)
    return bottom, top


def _named(module: Any) -> dict[str, Any]:
    # variables keep the full model's path (``cnn/conv1/kernel``); drop the model's name like the backend
    return {v.path.split("/", 1)[1] if "/" in v.path else v.path: v for v in module.weights}


def activation_shape(bottom: Any, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(int(d) for d in bottom.output_shape[1:])


def weights_of(module: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v.numpy()) for k, v in _named(module).items()}


def load_weights(module: Any, weights: Mapping[str, np.ndarray]) -> None:
    named = _named(module)
    missing = sorted(set(named) - set(weights))
    if missing:
        raise FrameworkError(f"weights lack {', '.join(missing[:5])} for this half of the model")
    for k, v in named.items():
        if tuple(v.shape) != tuple(np.shape(weights[k])):
            raise FrameworkError(f"weight {k} has shape {np.shape(weights[k])}, expected {tuple(v.shape)}")
        v.assign(np.asarray(weights[k]))


class KerasTop:
    """The server's half: forward from activations, loss on the labels, gradient w.r.t. the activations."""

    def __init__(self, top: Any, *, lr: float, momentum: float) -> None:
        self.model = top
        self.optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=not getattr(top, "ends_in_softmax", True)
        )

    def step(self, activations: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float, int]:
        acts = tf.convert_to_tensor(activations)
        y = tf.convert_to_tensor(np.asarray(labels, dtype=np.int64))
        with tf.GradientTape() as tape:
            tape.watch(acts)
            out = self.model(acts, training=True)
            loss = self.loss_fn(y, out)
        value = float(loss.numpy())
        if not math.isfinite(value):
            raise TrainingDiverged(f"training diverged on the server: loss {value}; lower the learning rate")
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, [acts, *variables])
        self.optimizer.apply_gradients(zip(grads[1:], variables, strict=True))
        correct = int(np.sum(np.argmax(out.numpy(), axis=1) == np.asarray(labels)))
        return np.asarray(grads[0].numpy(), dtype=np.float32), value, correct

    def weights(self) -> dict[str, np.ndarray]:
        return weights_of(self.model)


class KerasBottom:
    """The client's half: forward of a batch of images, then backward of the server's gradient."""

    def __init__(self, bottom: Any, *, lr: float, momentum: float) -> None:
        self.model = bottom
        self.optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
        self._tape: Any = None
        self._out: Any = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._tape = tf.GradientTape()
        with self._tape:
            self._out = self.model(tf.convert_to_tensor(scale_images(x)), training=True)
        return np.asarray(self._out.numpy(), dtype=np.float32)

    def backward(self, gradient: np.ndarray) -> None:
        if self._tape is None:
            raise FrameworkError("backward() without a forward() first")
        variables = self.model.trainable_variables
        grads = self._tape.gradient(self._out, variables, output_gradients=tf.convert_to_tensor(gradient))
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        self._tape = self._out = None

    def weights(self) -> dict[str, np.ndarray]:
        return weights_of(self.model)


def build_halves(
    model: str, cut: str, *, input_shape: tuple[int, int, int], num_classes: int, seed: int, threads: int
) -> tuple[Any, Any, Any]:
    from argofl.steps.frameworks import get_backend

    backend = get_backend("tensorflow")
    backend.configure(threads=threads)
    full = backend.build_model(model, input_shape=input_shape, num_classes=num_classes, seed=seed)
    bottom, top = split_model(full, cut)
    return full, bottom, top


def clone(top: Any) -> Any:
    """An independent copy of a top half (SplitFed v1 gives each client its own)."""
    copy = keras.models.clone_model(top)
    copy.set_weights(top.get_weights())
    copy.ends_in_softmax = getattr(top, "ends_in_softmax", True)
    return copy


Top = KerasTop
Bottom = KerasBottom
