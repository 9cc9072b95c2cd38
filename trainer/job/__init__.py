"""The training job the container runs: prepare, fit, write artifacts, commit."""
