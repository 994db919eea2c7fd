"""medpeft: parameter-efficient fine-tuning of segmentation models on medical images."""

__version__ = "0.1.0"
