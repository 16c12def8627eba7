"""Everything that speaks to Triton: the stub and its IPC lock, request/response helpers, model
config, threaded responders, the BLS engine client, the clone pipeline, the prompt cache and
the thin adapters that `model_repository/*/1/model.py` subclass."""
