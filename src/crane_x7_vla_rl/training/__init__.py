"""VLA-RL training: CLI, trainer, checkpoints, evaluation."""
