"""The cache's one rule (data.root/cache): every file there is named by `key(VERSION, *what
defines it)`; bump a kind's version when the rules that make or read it change.

    tokenizer-KEY.json           a trained vocabulary (pipeline.tokenizer_key)
    store-KEY/                   the prepared corpus (store.store_key)
    store-KEY/pairs-KEY.npy      a split's next-sentence pairs (pairing.split_pairs)
"""

from __future__ import annotations

import hashlib

TOKENIZER = 4  # how a vocabulary is trained from the corpus
STORE = 2  # the store's layout and reading rules (also checked against its meta.json)
PAIRS = 1  # what d2l_pairs and bert_pairs make


def key(version: int, *parts: object) -> str:
    """24 hex digits of the sha256 of `v{version}|part|part|...`: each part as str()."""
    text = "|".join(map(str, (f"v{version}", *parts)))
    return hashlib.sha256(text.encode()).hexdigest()[:24]
