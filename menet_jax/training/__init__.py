"""Training: the configuration, objectives by name, the one loop, checkpoints, metrics, run dirs."""
