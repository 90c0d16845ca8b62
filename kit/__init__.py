"""kit: nuclei instance segmentation from raw images to a scored submission, tracked in MLflow."""

__version__ = "0.1.0"
