"""Torch-facing ops over the compiled core, and their pure-PyTorch references."""
from .activation_ops import gelu_tanh
from .attention_ops import attention
from .block_reference import (attention_reference, gate_residual_reference, gelu_tanh_reference,
                              norm_modulate_reference, timestep_embedding_pair_reference)
from .embedding_ops import timestep_embedding, timestep_embedding_pair
from .norm_ops import norm_modulate
from .residual_ops import gate_residual
from .interpolant_ops import interpolant_pair, sampler_step
from .qk_norm_ops import qk_norm, qk_norm_reference
from .mmd import MMDLoss, mmd_loss, mmd_terms, pairwise_kernel
from .reference import (interpolant_pair_reference, mmd_loss_reference, pairwise_kernel_reference,
                        sampler_step_reference)

__all__ = ["attention", "MMDLoss", "mmd_loss", "mmd_terms", "mmd_loss_reference", "pairwise_kernel", "pairwise_kernel_reference",
           "interpolant_pair", "interpolant_pair_reference", "sampler_step", "sampler_step_reference",
           "norm_modulate", "gate_residual", "timestep_embedding", "timestep_embedding_pair",
           "attention_reference", "gate_residual_reference", "norm_modulate_reference",
           "timestep_embedding_pair_reference", "gelu_tanh", "gelu_tanh_reference", "qk_norm", "qk_norm_reference"]
