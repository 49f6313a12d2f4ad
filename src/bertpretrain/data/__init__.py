"""The data pipeline: corpus -> tokenizer -> token store -> examples -> batches.
pipeline.py runs it in that order (and caches it); each step has a module of its own."""
