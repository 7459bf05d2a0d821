"""Networks G(x, c_t, c_s, labels) that IMMParametrization wraps: MLP (2-D toys), DiT (ImageNet latents),
UNet (DDPM++, CIFAR-10)."""
from ..nn.sinusoidal import timestep_embedding
from .dit import DiT
from .mlp import MLP
from .unet import UNet

__all__ = ["DiT", "MLP", "UNet", "timestep_embedding"]
