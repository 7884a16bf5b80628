"""colorgan: CoLoR-GAN continual few-shot image generation on fastlora layers."""
__version__ = "0.1.0"
