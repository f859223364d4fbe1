"""tuner-service: find the best Adam optimizer settings for Keras models."""

__version__ = "0.1.0"
