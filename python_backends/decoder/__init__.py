"""The CosyVoice decoder of Step-Audio-EditX (step_audio_internals.md §3), our own implementation:
the `cosyvoice.yaml` reader, the flow (tokens → mel) and the parts around it, loading the real
checkpoint files (`cosyvoice.yaml`, `flow.pt`, `hift.pt`, `campplus.onnx`) by their real names."""
