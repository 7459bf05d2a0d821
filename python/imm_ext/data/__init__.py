"""Data for IMM training, all readable offline (data-and-metrics.md): `load_dataset` for the 2-D toys,
scikit-learn's digits, Fashion-MNIST (Debian package), image folders, EDM-style zips, numpy arrays and
pre-encoded VAE latents; `BatchStream` for seeded, rank-sharded, resumable batches; `toy2d` for the toy
distributions' samplers, exact densities and modes."""
from . import toy2d
from .array_dataset import ArrayDataset
from .batch_stream import BatchStream
from .fashion_mnist import read_idx
from .image_files import IMAGE_EXTENSIONS
from .image_folder import ImageFolderDataset
from .image_zip import ImageZipDataset
from .latents import LATENT_SCALE, SD_VAE_FT_EMA_MEAN, SD_VAE_FT_EMA_STD, LatentPosteriorDataset
from .load import DATASET_NAMES, load_dataset

__all__ = ["ArrayDataset", "BatchStream", "DATASET_NAMES", "IMAGE_EXTENSIONS", "ImageFolderDataset", "ImageZipDataset",
           "LATENT_SCALE", "LatentPosteriorDataset", "SD_VAE_FT_EMA_MEAN", "SD_VAE_FT_EMA_STD", "load_dataset", "read_idx",
           "toy2d"]
