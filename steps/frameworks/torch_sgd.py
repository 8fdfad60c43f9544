"""SGD with momentum for the torch steps, step for step what ``torch.optim.SGD`` computes.

``torch.optim`` imports TorchDynamo the first time an optimizer is built (about 1.2 s, every step
process: ``Optimizer.add_param_group`` is wrapped in ``torch._disable_dynamo``). Clients only need
plain SGD with momentum (no dampening, weight decay or Nesterov), so this is those few lines, with the
same in-place operations in the same order as torch's single-tensor implementation; a test checks the
two agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["MomentumSGD"]


class MomentumSGD:
    """``torch.optim.SGD(params, lr=lr, momentum=momentum)``: ``zero_grad`` and ``step``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr
        self.momentum = momentum
        self._buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none=True``)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """``buf = momentum · buf + grad`` (``buf = grad`` at first), then ``param -= lr · buf``."""
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if self.momentum != 0:
                buf = self._buffers[i]
                if buf is None:
                    buf = torch.clone(grad).detach()
                    self._buffers[i] = buf
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)
                grad = buf
            p.add_(grad, alpha=-self.lr)
