"""BERT itself: its architecture's settings, the attention kernels over packed tokens
(padded and variable-length, dropout) and the encoder with its pretraining heads."""
