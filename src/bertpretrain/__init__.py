"""bertpretrain: config-driven BERT pretraining and contextual text encoding."""

__version__ = "0.1.0"
