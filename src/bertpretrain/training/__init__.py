"""A training run: set-up, the loop, optimisation, progress, signals, validation,
checkpoints and the run dir's layout and lock."""
