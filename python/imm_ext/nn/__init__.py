"""Timestep-conditioned building blocks of IMM's networks (architecture.md, family 2).

`AdaLNModulation` (SiLU + zero-initialised Linear -> shift / scale / gate), `SelfAttention` (fused qkv,
optional qk-norm), `ModulatedAttention` and `ModulatedMLP` (the two adaLN-Zero halves of a DiT block),
`ModulatedOutput` (its output head), `TimestepEmbedder` / `TimePairEmbedder` (sinusoidal ->
Linear-SiLU-Linear, for c_t and c_s summed) and `LabelEmbedder` (with a null class). Their block ops
run through `imm_ext.nn.functional`; `imm_ext.nn.stock` holds the same layers written with stock
PyTorch, the baseline for tests and benchmarks.
"""
from . import functional
from .attention import SelfAttention
from .blocks import ModulatedAttention, ModulatedMLP, ModulatedOutput
from .embedding import LabelEmbedder, TimePairEmbedder, TimestepEmbedder
from .modulation import AdaLNModulation
from .sinusoidal import timestep_embedding
from .stock import StockModulatedAttention, StockModulatedMLP, StockModulatedOutput, StockTimePairEmbedder

__all__ = ["AdaLNModulation", "LabelEmbedder", "ModulatedAttention", "ModulatedMLP", "ModulatedOutput", "SelfAttention",
           "StockModulatedAttention", "StockModulatedMLP", "StockModulatedOutput", "StockTimePairEmbedder",
           "TimePairEmbedder", "TimestepEmbedder", "functional", "timestep_embedding"]
