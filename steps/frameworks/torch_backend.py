"""PyTorch backend. Models take float32 NCHW tensors in [0, 1] and return logits.

Weights are the model's ``state_dict`` (parameters and buffers) as numpy arrays. Training uses the GPU
when one is available, the CPU otherwise.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from argofl.steps.frameworks.allocator import tune_for_training
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
from argofl.steps.frameworks.torch_sgd import MomentumSGD

__all__ = ["TorchBackend", "create_backend"]


def _cnn(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Two 5x5 conv + max-pool blocks and a 128-unit hidden layer (~0.2M weights at 28x28x1)."""
    h, w, c = input_shape
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(c, 16, kernel_size=5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, kernel_size=5, padding=2),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * (h // 4) * (w // 4), 128),
            relu3=nn.ReLU(),
            logits=nn.Linear(128, num_classes),
        )
    )


def _mlp(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Two hidden layers of 200 units (the "2NN" of the FedAvg paper)."""
    h, w, c = input_shape
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(h * w * c, 200),
            relu1=nn.ReLU(),
            fc2=nn.Linear(200, 200),
            relu2=nn.ReLU(),
            logits=nn.Linear(200, num_classes),
        )
    )


def _he_init(net: nn.Module) -> nn.Module:
    """He-normal weights and zero biases: ReLU networks start learning sooner than with torch's default."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return net


_BUILTINS = {
    "cnn": lambda shape, classes: _he_init(_cnn(shape, classes)),
    "mlp": lambda shape, classes: _he_init(_mlp(shape, classes)),
}


def _set_deterministic(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode)`` without its import of TorchInductor (≈1.5 s a step).

    The public call also sets Inductor's ``deterministic`` flag, which only ``torch.compile`` reads; the
    flag is still set when Inductor is already loaded (a model factory that compiled something).
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(mode)
        return
    setter(mode)
    inductor_config = sys.modules.get("torch._inductor.config")
    if inductor_config is not None:
        inductor_config.deterministic = mode  # type: ignore[attr-defined]


def _seed(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)`` for what ``device`` draws from. On the CPU only the CPU generator: the
    public call also queues a seed for each accelerator torch knows (CUDA, XPU, MTIA), each capturing a
    Python stack with its source lines: 1.7–2.4 ms for a forked step's first call."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


class TorchBackend:
    """:class:`~steps.frameworks.base.Backend` for PyTorch."""

    name = "torch"

    def __init__(self, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def configure(self, *, threads: int | None, deterministic: bool = True) -> None:
        tune_for_training()  # a step's first epoch would otherwise pay glibc's warm-up page faults
        if threads is not None:
            if threads < 1:
                raise FrameworkError(f"threads={threads} must be >= 1 (or None for the default)")
            torch.set_num_threads(threads)
            # only settable before the first inter-op parallel work; harmless to skip after that
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(threads)
        if deterministic and self.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _set_deterministic(deterministic)
        torch.backends.cudnn.benchmark = not deterministic

    def build_model(
        self, model: str, *, input_shape: tuple[int, int, int], num_classes: int, seed: int
    ) -> Any:
        factory = resolve_model(model, _BUILTINS)
        with torch.random.fork_rng(devices=[]):
            _seed(seed, torch.device("cpu"))  # built on the CPU, then moved
            net = call_factory(model, factory, input_shape, num_classes)
        if not isinstance(net, nn.Module):
            raise FrameworkError(
                f"model factory {model!r} returned {type(net).__name__}, not a torch.nn.Module"
            )
        return net.to(self.device)

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

    def set_weights(self, model: Any, weights: Mapping[str, np.ndarray]) -> None:
        state = model.state_dict()
        check_weights({k: tuple(v.shape) for k, v in state.items()}, weights)
        with torch.no_grad():
            for k, v in state.items():
                v.copy_(torch.tensor(np.asarray(weights[k])))  # a copy: read-only arrays are fine

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.from_numpy(scale_images(x)).permute(0, 3, 1, 2).contiguous().to(self.device)
        return xt, torch.tensor(y, dtype=torch.int64, device=self.device)

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
        xt, yt = self._tensors(x, y)
        n = len(yt)
        optimizer = MomentumSGD(model.parameters(), lr=lr, momentum=momentum)
        # FedProx: the gradient of μ/2·‖w − w_start‖² is μ·(w − w_start), added to each batch's gradient
        anchors = [p.detach().clone() for p in optimizer.params] if prox_mu > 0 else []
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        loss_sum, correct = 0.0, 0
        with torch.random.fork_rng(devices=[]):
            _seed(seed, self.device)  # dropout and other in-model randomness
            for epoch, order in enumerate(epoch_orders(n, epochs, seed), start=1):
                loss_sum, correct = 0.0, 0
                for batch, idx in enumerate(_batches(order, batch_size, self.device), start=1):
                    xb, yb = xt.index_select(0, idx), yt.index_select(0, idx)
                    optimizer.zero_grad()
                    logits = model(xb)
                    loss = loss_fn(logits, yb)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise TrainingDiverged(
                            f"training diverged: loss {value} at epoch {epoch}/{epochs}, batch {batch} "
                            f"(lr={lr}, batch_size={batch_size}): lower the learning rate"
                        )
                    loss.backward()
                    if anchors:
                        _add_proximal(optimizer.params, anchors, prox_mu)
                    optimizer.step()
                    loss_sum += value * len(idx)
                    correct += int((logits.argmax(1) == yb).sum())
        return {"loss": loss_sum / n, "accuracy": correct / n, "examples": float(n)}

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> dict[str, float]:
        check_data(x, y)
        if batch_size < 1:
            raise FrameworkError(f"batch_size={batch_size} must be >= 1")
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        model.eval()
        loss_sum, correct = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                xb, yb = self._tensors(x[start : start + batch_size], y[start : start + batch_size])
                logits = model(xb)
                loss_sum += float(loss_fn(logits, yb))
                correct += int((logits.argmax(1) == yb).sum())
        n = len(x)
        return {"loss": loss_sum / n, "accuracy": correct / n, "examples": float(n)}

    def log_model(self, model: Any, *, name: str, input_example: np.ndarray | None = None) -> str:
        import mlflow
        import mlflow.pytorch

        if mlflow.active_run() is None:
            raise FrameworkError(f"cannot log model {name!r}: no active mlflow run (start one first)")
        example = None
        if input_example is not None:
            check_data(input_example, np.zeros(len(input_example), dtype=np.int64))
            example = scale_images(input_example).transpose(0, 3, 1, 2)
        info = mlflow.pytorch.log_model(
            model.cpu(),
            name=name,
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        model.to(self.device)
        return str(info.model_uri)


@torch.no_grad()
def _add_proximal(params: list[torch.nn.Parameter], anchors: list[torch.Tensor], mu: float) -> None:
    for p, anchor in zip(params, anchors, strict=True):
        if p.grad is not None:
            p.grad.add_(p.detach() - anchor, alpha=mu)


def _batches(order: np.ndarray, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    for start in range(0, len(order), batch_size):
        yield torch.from_numpy(order[start : start + batch_size]).to(device)


def create_backend() -> Backend:
    """The entry point used by :func:`steps.frameworks.get_backend` (type-checked against the protocol)."""
    return TorchBackend()
