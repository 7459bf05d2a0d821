"""Networks G(x, c_t, c_s, labels) that IMMParametrization wraps (DiT and the UNet come next)."""
from .embeddings import timestep_embedding, timestep_embedding_pair
from .mlp import MLP

__all__ = ["MLP", "timestep_embedding", "timestep_embedding_pair"]
