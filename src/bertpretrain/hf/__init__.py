"""Hugging Face interop: reading transformers BERT folders and their vocabularies
(`init=`), and writing a run as one (`export`)."""
