"""Keras 3 on TensorFlow backend. Models take float32 NHWC inputs in [0, 1].

A model may end in a softmax (idiomatic Keras; the built-ins do) or return logits: the loss is chosen
by looking at the last layer. Weights are named by their Keras variable path without the model's own
name, e.g. ``conv1/kernel``; ``build_model`` resets Keras' name counters so that auto-generated layer
names are the same in every process.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

os.environ["KERAS_BACKEND"] = "tensorflow"  # this module is the TensorFlow backend, whatever else is set
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no INFO lines from the C++ runtime

import keras
import tensorflow as tf

from argofl.steps.frameworks.base import (
    Backend,
    FrameworkError,
    TrainingDiverged,
    call_factory,
    check_data,
    check_train_args,
    check_weights,
    epoch_orders,
    resolve_model,
    scale_images,
)

__all__ = ["KerasBackend", "create_backend"]

log = logging.getLogger(__name__)

if keras.backend.backend() != "tensorflow":
    raise FrameworkError(
        f"keras was already imported with the {keras.backend.backend()!r} backend; the tensorflow framework "
        "needs KERAS_BACKEND=tensorflow"
    )

layers = keras.layers
_HE = "he_normal"  # ReLU layers start learning sooner than with the default Glorot init


def _cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Two 5x5 conv + max-pool blocks and a 128-unit hidden layer (same shape as the torch ``cnn``)."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(16, 5, padding="same", activation="relu", kernel_initializer=_HE, name="conv1"),
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(32, 5, padding="same", activation="relu", kernel_initializer=_HE, name="conv2"),
            layers.MaxPooling2D(2, name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", kernel_initializer=_HE, name="fc1"),
            layers.Dense(num_classes, activation="softmax", name="classifier"),
        ],
        name="cnn",
    )


def _mlp(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Two hidden layers of 200 units (the "2NN" of the FedAvg paper)."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Flatten(name="flatten"),
            layers.Dense(200, activation="relu", kernel_initializer=_HE, name="fc1"),
            layers.Dense(200, activation="relu", kernel_initializer=_HE, name="fc2"),
            layers.Dense(num_classes, activation="softmax", name="classifier"),
        ],
        name="mlp",
    )


_BUILTINS = {"cnn": _cnn, "mlp": _mlp}


def _outputs_probabilities(model: keras.Model) -> bool:
    """Whether the model ends in a softmax (else its outputs are taken as logits)."""
    last = model.layers[-1] if model.layers else None
    if isinstance(last, layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is keras.activations.softmax or getattr(activation, "__name__", "") == "softmax"


def _compile(model: keras.Model, *, lr: float, momentum: float) -> None:
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not _outputs_probabilities(model)),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def _weight_map(model: keras.Model) -> dict[str, Any]:
    prefix = f"{model.name}/"
    named: dict[str, Any] = {}
    for variable in model.weights:
        path = variable.path.removeprefix(prefix)
        if path in named:
            raise FrameworkError(
                f"model {model.name!r} has two weights named {path!r}: give its layers unique names"
            )
        named[path] = variable
    return named


class KerasBackend:
    """:class:`~steps.frameworks.base.Backend` for Keras 3 on TensorFlow."""

    name = "tensorflow"

    def configure(self, *, threads: int | None, deterministic: bool = True) -> None:
        if threads is not None:
            if threads < 1:
                raise FrameworkError(f"threads={threads} must be >= 1 (or None for the default)")
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:  # the runtime has started: the thread pools are fixed from then on
                current = tf.config.threading.get_intra_op_parallelism_threads()
                if current != threads:
                    log.warning(
                        "TensorFlow already started with %s intra-op threads; %s ignored", current, threads
                    )
        if deterministic:  # TensorFlow has no public way back: deterministic=False only skips this
            tf.config.experimental.enable_op_determinism()

    def build_model(
        self, model: str, *, input_shape: tuple[int, int, int], num_classes: int, seed: int
    ) -> Any:
        factory = resolve_model(model, _BUILTINS)
        keras.backend.clear_session()  # same auto-generated names in every process
        keras.utils.set_random_seed(seed)
        net = call_factory(model, factory, input_shape, num_classes)
        if not isinstance(net, keras.Model):
            raise FrameworkError(f"model factory {model!r} returned {type(net).__name__}, not a keras.Model")
        if not net.built:
            net.build((None, *input_shape))
        _weight_map(net)  # fail early on duplicate names
        return net

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        return {name: np.array(v.numpy(), copy=True) for name, v in _weight_map(model).items()}

    def set_weights(self, model: Any, weights: Mapping[str, np.ndarray]) -> None:
        named = _weight_map(model)
        check_weights({k: tuple(v.shape) for k, v in named.items()}, weights)
        for k, v in named.items():
            v.assign(np.asarray(weights[k], dtype=v.dtype))

    def train(
        self,
        model: Any,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        momentum: float,
        seed: int,
        prox_mu: float = 0.0,
    ) -> dict[str, float]:
        check_train_args(
            x, y, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, prox_mu=prox_mu
        )
        xs, ys = scale_images(x), np.asarray(y, dtype=np.int64)
        _compile(model, lr=lr, momentum=momentum)  # a fresh optimizer: no momentum from earlier rounds
        keras.utils.set_random_seed(seed)  # dropout and other in-model randomness
        step = _proximal_step(model, prox_mu) if prox_mu > 0 else None
        loss_sum = correct = 0.0
        for epoch, order in enumerate(epoch_orders(len(ys), epochs, seed), start=1):
            # train_on_batch reports the batch's own metrics: the epoch's means are summed here
            loss_sum = correct = 0.0
            for batch, start in enumerate(range(0, len(order), batch_size), start=1):
                idx = order[start : start + batch_size]
                if step is None:
                    logs = model.train_on_batch(xs[idx], ys[idx], return_dict=True)
                else:
                    logs = step(xs[idx], ys[idx])
                loss_sum += float(logs["loss"]) * len(idx)
                correct += float(logs["accuracy"]) * len(idx)
                if not math.isfinite(logs["loss"]):
                    raise TrainingDiverged(
                        f"training diverged: loss {logs['loss']} at epoch {epoch}/{epochs}, batch {batch} "
                        f"(lr={lr}, batch_size={batch_size}): lower the learning rate"
                    )
        n = float(len(ys))
        return {"loss": loss_sum / n, "accuracy": correct / n, "examples": n}

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> dict[str, float]:
        check_data(x, y)
        if batch_size < 1:
            raise FrameworkError(f"batch_size={batch_size} must be >= 1")
        probabilities = _outputs_probabilities(model)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            yb = np.asarray(y[start : start + batch_size], dtype=np.int64)
            out = np.asarray(model.predict_on_batch(scale_images(x[start : start + batch_size])), np.float64)
            if probabilities:
                log_p = np.log(np.clip(out, 1e-12, None))
            else:  # log-softmax of logits
                shifted = out - out.max(axis=1, keepdims=True)
                log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss_sum -= float(log_p[np.arange(len(yb)), yb].sum())
            correct += int((out.argmax(axis=1) == yb).sum())
        n = len(x)
        return {"loss": loss_sum / n, "accuracy": correct / n, "examples": float(n)}

    def log_model(self, model: Any, *, name: str, input_example: np.ndarray | None = None) -> str:
        import mlflow
        import mlflow.tensorflow

        if mlflow.active_run() is None:
            raise FrameworkError(f"cannot log model {name!r}: no active mlflow run (start one first)")
        example = None
        if input_example is not None:
            check_data(input_example, np.zeros(len(input_example), dtype=np.int64))
            example = scale_images(input_example)
        info = mlflow.tensorflow.log_model(
            model,
            name=name,
            input_example=example,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        )
        return str(info.model_uri)


def _proximal_step(model: keras.Model, mu: float) -> Any:
    """FedProx: a training step on ``loss + μ/2·‖w − w_start‖²`` (trainable weights; ``w_start`` now);
    ``loss`` includes the model's own regularization losses, as in ``train_on_batch``."""
    variables = model.trainable_variables
    anchors = [tf.constant(v.numpy()) for v in variables]
    loss_fn, optimizer = model.loss, model.optimizer

    def step(xb: np.ndarray, yb: np.ndarray) -> dict[str, float]:
        with tf.GradientTape() as tape:
            out = model(xb, training=True)
            loss = loss_fn(yb, out)
            if model.losses:  # kernel/activity regularizers: part of the client's objective F_k
                loss = loss + tf.add_n([tf.reduce_sum(extra) for extra in model.losses])
            prox = tf.add_n(
                [tf.reduce_sum(tf.square(v.value - a)) for v, a in zip(variables, anchors, strict=True)]
            )
            total = loss + (mu / 2) * prox
        grads = tape.gradient(total, [v.value for v in variables])
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        accuracy = float(np.mean(np.argmax(out.numpy(), axis=1) == yb))
        return {"loss": float(loss), "accuracy": accuracy}

    return step


def create_backend() -> Backend:
    """The entry point used by :func:`steps.frameworks.get_backend` (type-checked against the protocol)."""
    return KerasBackend()
