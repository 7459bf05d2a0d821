"""Networks G(x, c_t, c_s, labels) that IMMParametrization wraps: MLP (2-D toys), DiT (ImageNet latents),
UNet (DDPM++, CIFAR-10); `build(kind, **config)` by name, `save_model` / `load_model` as safetensors,
and `load_authors_state_dict` / `load_released` for the IMM authors' released weights (interop, released)."""
from ..ops.embedding_ops import timestep_embedding, timestep_embedding_pair
from .dit import DiT
from .interop import load_authors_state_dict
from .mlp import MLP
from .registry import MODELS, build
from .released import load_released
from .serialization import load_model, save_model
from .unet import UNet

__all__ = ["DiT", "MLP", "MODELS", "UNet", "build", "load_authors_state_dict", "load_model", "load_released", "save_model",
           "timestep_embedding", "timestep_embedding_pair"]
