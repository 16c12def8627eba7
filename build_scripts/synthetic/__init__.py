"""Synthetic Step-Audio-Tokenizer weights: same architectures, shapes and file layout as a
real release, random weights with codebooks fitted to espeak-ng speech."""
