"""PyTorch halves of a split model: the client's bottom and the server's top.

A model is split at a named layer (``cut``) of its ``nn.Sequential``: the bottom is every layer up to
and including ``cut``, the top is the rest. Both halves share the full model's modules, so their
``state_dict`` names are the full model's names and ``bottom ∪ top`` is the full model's weights.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from argofl.steps.frameworks.base import FrameworkError, TrainingDiverged, scale_images
from argofl.steps.frameworks.torch_sgd import MomentumSGD

__all__ = ["TorchBottom", "TorchTop", "activation_shape", "split_model"]


def split_model(model: nn.Module, cut: str) -> tuple[nn.Sequential, nn.Sequential]:
    """``(bottom, top)`` halves of a sequential ``model`` cut after layer ``cut``."""
    if not isinstance(model, nn.Sequential):
        raise FrameworkError(
            f"split learning needs an nn.Sequential model with named layers, got {type(model).__name__}"
        )
    names = [name for name, _ in model.named_children()]
    if cut not in names or cut == names[-1]:
        raise FrameworkError(
            f"split.cut={cut!r} is not a layer that leaves a top half: expected one of {names[:-1]}"
        )
    at = names.index(cut) + 1
    children = list(model.named_children())
    return nn.Sequential(OrderedDict(children[:at])), nn.Sequential(OrderedDict(children[at:]))


def _images(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(scale_images(x)).permute(0, 3, 1, 2).contiguous().to(device)


def activation_shape(bottom: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """Shape of one example's activations at the cut (without the batch dimension)."""
    h, w, c = input_shape
    with torch.inference_mode():
        out = bottom(torch.zeros(1, c, h, w, device=next(bottom.parameters()).device))
    return tuple(int(d) for d in out.shape[1:])


def weights_of(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_weights(module: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Load the entries of ``weights`` that belong to ``module`` (all of them must be there)."""
    state = module.state_dict()
    missing = sorted(set(state) - set(weights))
    if missing:
        raise FrameworkError(f"weights lack {', '.join(missing[:5])} for this half of the model")
    with torch.no_grad():
        for k, v in state.items():
            if tuple(v.shape) != tuple(np.shape(weights[k])):
                raise FrameworkError(
                    f"weight {k} has shape {np.shape(weights[k])}, expected {tuple(v.shape)}"
                )
            v.copy_(torch.as_tensor(np.asarray(weights[k])))


class TorchTop:
    """The server's half: forward from activations, loss on the server's labels, backward, SGD step."""

    def __init__(self, top: nn.Module, *, lr: float, momentum: float) -> None:
        self.model = top
        self.device = next(top.parameters()).device
        self.optimizer = MomentumSGD(top.parameters(), lr=lr, momentum=momentum)
        self.loss_fn = nn.CrossEntropyLoss()
        top.train()

    def step(self, activations: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float, int]:
        """One SGD step; returns (gradient w.r.t. the activations, batch loss, correct predictions)."""
        acts = torch.from_numpy(np.ascontiguousarray(activations)).to(self.device).requires_grad_(True)
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.optimizer.zero_grad()
        logits = self.model(acts)
        loss = self.loss_fn(logits, y)
        value = float(loss.item())
        if not math.isfinite(value):
            raise TrainingDiverged(f"training diverged on the server: loss {value}; lower the learning rate")
        loss.backward()
        self.optimizer.step()
        if acts.grad is None:
            raise FrameworkError("the top half does not depend on its input activations")
        correct = int((logits.argmax(1) == y).sum())
        return acts.grad.detach().cpu().numpy().astype(np.float32, copy=False), value, correct

    def weights(self) -> dict[str, np.ndarray]:
        return weights_of(self.model)


class TorchBottom:
    """The client's half: forward of a batch of images, then backward of the server's gradient."""

    def __init__(self, bottom: nn.Module, *, lr: float, momentum: float) -> None:
        self.model = bottom
        self.device = next(bottom.parameters()).device
        self.optimizer = MomentumSGD(bottom.parameters(), lr=lr, momentum=momentum)
        self._out: torch.Tensor | None = None
        bottom.train()

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.optimizer.zero_grad()
        self._out = self.model(_images(x, self.device))
        return self._out.detach().cpu().numpy().astype(np.float32, copy=False)

    def backward(self, gradient: np.ndarray) -> None:
        if self._out is None:
            raise FrameworkError("backward() without a forward() first")
        self._out.backward(torch.from_numpy(np.ascontiguousarray(gradient)).to(self.device))
        self.optimizer.step()
        self._out = None

    def weights(self) -> dict[str, np.ndarray]:
        return weights_of(self.model)


def build_halves(
    model: str, cut: str, *, input_shape: tuple[int, int, int], num_classes: int, seed: int, threads: int
) -> tuple[Any, nn.Sequential, nn.Sequential]:
    """A fresh full model (seeded as FedAvg's) and its bottom and top halves."""
    from argofl.steps.frameworks import get_backend

    backend = get_backend("torch")
    backend.configure(threads=threads)
    full = backend.build_model(model, input_shape=input_shape, num_classes=num_classes, seed=seed)
    bottom, top = split_model(full, cut)
    return full, bottom, top


def clone(top: nn.Module) -> nn.Module:
    """An independent copy of a top half (SplitFed v1 gives each client its own)."""
    import copy

    return copy.deepcopy(top)


Top = TorchTop
Bottom = TorchBottom
