"""Networks G(x, c_t, c_s, labels) that IMMParametrization wraps (DiT and the UNet come next)."""
from .embeddings import timestep_embedding
from .mlp import MLP

__all__ = ["MLP", "timestep_embedding"]
