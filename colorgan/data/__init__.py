"""Datasets: plain image folders and the emoji few-shot benchmark builder."""
from colorgan.data.folder import IMAGE_EXTENSIONS, ImageFolder, list_images, load_image

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "list_images", "load_image"]
