"""The models a JobSpec can ask for, and `model.bin`, the archive they are exported to."""
