"""Networks G(x, c_t, c_s, labels) that IMMParametrization wraps (DiT and the UNet come next)."""
from ..nn.sinusoidal import timestep_embedding
from .mlp import MLP

__all__ = ["MLP", "timestep_embedding"]
