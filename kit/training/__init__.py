"""Training: trainer loop, losses, optimisers and schedules, checkpoints."""
