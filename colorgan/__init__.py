"""colorgan: CoLoR-GAN continual few-shot image generation on fastlora layers.

Model API: `Generator`, `Discriminator` (rosinality StyleGAN2 architecture and parameter
names, per-task fastlora adapters); checkpoint folders: `save_checkpoint`, `load_checkpoint`.
"""
__version__ = "0.1.0"

from colorgan.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from colorgan.discriminator import Discriminator  # noqa: E402
from colorgan.generator import Generator  # noqa: E402

__all__ = ["Discriminator", "Generator", "__version__", "load_checkpoint", "save_checkpoint"]
