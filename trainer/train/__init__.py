"""Training: the loop, its schedule, evaluation and checkpoints."""
