"""Sweeps: many trials of one base JobSpec, each an ordinary job, reading the data once."""
