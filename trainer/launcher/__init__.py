"""Renting Vast.ai instances, running a job on them and cleaning up after it."""
