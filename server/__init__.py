"""Flower ServerApp: task-aware aggregation, checkpoints, resume and reporting."""
