"""Build-time tools: synthetic weights, test speech and the Triton model repository."""
