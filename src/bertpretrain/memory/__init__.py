"""The memory plan: what a run's weights, optimizer and activations take, against what
the device has, and the micro-batches that fit."""
