"""Fine-tuning: loop, losses, schedules, checkpoints, distributed set-up, batch prediction."""
