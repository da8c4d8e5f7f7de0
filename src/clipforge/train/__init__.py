"""Training: configuration, loop, losses, distributed helpers, checkpoints, schedules and logging."""
