"""Torch-facing ops over the compiled core, and their pure-PyTorch references."""
from .mmd import MMDLoss, mmd_loss, pairwise_kernel
from .reference import mmd_loss_reference, pairwise_kernel_reference

__all__ = ["MMDLoss", "mmd_loss", "mmd_loss_reference", "pairwise_kernel", "pairwise_kernel_reference"]
