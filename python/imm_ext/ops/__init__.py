"""Torch-facing ops over the compiled core, and their pure-PyTorch references."""
from .mmd import MMDLoss, mmd_loss, mmd_terms, pairwise_kernel
from .reference import mmd_loss_reference, pairwise_kernel_reference

__all__ = ["MMDLoss", "mmd_loss", "mmd_terms", "mmd_loss_reference", "pairwise_kernel", "pairwise_kernel_reference"]
