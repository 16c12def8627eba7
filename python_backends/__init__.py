"""The Step-Audio Triton models' importable logic, in rooms that follow the pipeline.

- `tokenizer/`: prompt audio → vq02 + vq06 codes → merged `<audio_N>` ids (and `reference/`,
  the original algorithm step by step);
- `llm/`: Step1 weights, sampling, continuous-batching generation, text tokenizer, prompts
  (and `reference.py`);
- `decoder/`: audio tokens → flow → HiFT → waveform, the prompt's mel and speaker embedding
  (and `reference.py`);
- `engines/`: ONNX/TensorRT engine signatures, profiles and sidecars;
- `serving/`: everything that talks to Triton (the stub, request/response helpers, threaded
  responders, BLS engine client, clone pipeline, prompt cache, per-stage adapters);
- top level: `settings.py` (typed settings), `errors.py`, `file_io.py`, `onnx_runtime.py`.

Imports point one way: `serving` → (`tokenizer`, `llm`, `decoder`, `engines`) → top-level
modules. No algorithm package imports `serving`, and no module imports `triton_python_backend_utils`
outside `serving/stub.py`.
"""
