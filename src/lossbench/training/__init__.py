"""Training: configuration layers, batches, the training loop and the run folder."""
