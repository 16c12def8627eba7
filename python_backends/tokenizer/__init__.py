"""The Step-Audio audio tokenizer: preprocessing, batched vq02 (Paraformer + k-means) and vq06
(speech_tokenizer_v1), the 2:3 merge; `reference/` is the original algorithm step by step."""
