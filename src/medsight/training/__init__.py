"""The trainer, checkpoints, early stopping, seeding and bundle writing."""
