"""One declaration per fused op with a backward kernel: both of its routes from the same functions.

    op = fused_op("gelu_tanh", forward, forward_fake, backward, backward_fake, setup, gradients)
    op(x)          # eager: a torch.autograd.Function over the kernels; compiled: the custom op

`fused_op` registers the torch.library custom ops `imm_ext::<name>` (forward) and
`imm_ext::<name>_backward` with their fake kernels and the forward's autograd; these are what
torch.compile traces and what direct `torch.ops.imm_ext.*` calls reach. In eager mode the same
`forward`, `setup` and `gradients` run inside a torch.autograd.Function instead, which skips the
custom-op dispatch, a sizeable part of a training step on small networks such as the digits DiT.
There is one autograd rule per op (`gradients`), whichever route runs.

- forward(*inputs) -> outputs, and backward(*tensors) -> gradients: annotated functions (the custom ops'
  schemas come from their annotations) that check their arguments and launch the kernels;
- forward_fake, backward_fake: the same checks and empty outputs (torch.compile's shape propagation);
- setup(ctx, inputs, outputs): what the backward needs (save_for_backward, mark_non_differentiable);
- gradients(ctx, grads, backward) -> one entry per input: `grads` holds one cotangent per output and
  `backward` is the backward kernel, as a custom op or a plain call, depending on the route.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


class FusedOp:
    """A fused op's two routes; call it like its forward."""

    def __init__(self, op, backward_op, eager: type):
        self.op, self.backward_op, self._eager = op, backward_op, eager

    def __call__(self, *inputs):
        if torch.compiler.is_compiling():
            return self.op(*inputs)
        return self._eager.apply(*inputs)


def fused_op(name: str, forward: Callable, forward_fake: Callable, backward: Callable, backward_fake: Callable,
             setup: Callable, gradients: Callable, backward_name: Optional[str] = None) -> FusedOp:
    """The op `imm_ext::<name>` and its backward `imm_ext::<backward_name>` (default `<name>_backward`)."""
    op = torch.library.custom_op(f"imm_ext::{name}", forward, mutates_args=())
    op.register_fake(forward_fake)
    backward_op = torch.library.custom_op(f"imm_ext::{backward_name or name + '_backward'}", backward,
                                          mutates_args=())
    backward_op.register_fake(backward_fake)
    op.register_autograd(lambda ctx, *grads: gradients(ctx, grads, backward_op), setup_context=setup)

    def eager_forward(ctx, *inputs):
        outputs = forward(*inputs)
        setup(ctx, inputs, outputs)
        return outputs

    def eager_backward(ctx, *grads):
        return gradients(ctx, grads, backward)

    # Named at creation: autograd names the backward node class <Name>Backward from it (profiles show it).
    Eager = type("".join(part.title() for part in name.split("_")), (torch.autograd.Function,),
                 {"forward": staticmethod(eager_forward), "backward": staticmethod(eager_backward)})
    return FusedOp(op, backward_op, Eager)
