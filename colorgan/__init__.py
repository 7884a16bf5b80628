"""colorgan: CoLoR-GAN continual few-shot image generation on fastlora layers.

Model API: `Generator`, `Discriminator` (rosinality StyleGAN2 architecture and parameter
names, per-task fastlora adapters); checkpoint folders: `save_checkpoint`, `load_checkpoint`.
"""
from colorgan.checkpoint import load_checkpoint, save_checkpoint
from colorgan.discriminator import Discriminator
from colorgan.generator import Generator
from colorgan.version import __version__

__all__ = ["Discriminator", "Generator", "__version__", "load_checkpoint", "save_checkpoint"]
