"""QuantLab's GPU training job runner: JobSpec in, verified model artifacts out."""

__version__ = "0.1.0"
