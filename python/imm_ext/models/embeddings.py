"""Sinusoidal embeddings of the time inputs c_t = 1000 t and c_s = 1000 s (or 1000 (t - s)).

The DiT/ADM convention (imm-method.md §2.3): half the channels are cos(c f_k), half sin(c f_k), with
frequencies f_k = max_period^(-k / half) for k = 0 .. half - 1. The arguments c f_k are formed in
float64, since near T the times of one IMM step differ by about 1e-7 (x 1000 = 1e-4), which float32
arguments of size up to 1000 would round away; the result is cast to `dtype`.

The computation is the fused op of imm_ext.ops (CPU and CUDA kernels, forward and backward):
`timestep_embedding_pair(c_t, c_s, dim)` embeds both time inputs of G(x, c_t, c_s) in one call,
`timestep_embedding(c, dim)` a single one.
"""
from ..ops.conditioning_ops import timestep_embedding, timestep_embedding_pair

__all__ = ["timestep_embedding", "timestep_embedding_pair"]
