"""Engine plumbing shared by the build scripts and the models that call engines: ONNX
signatures, TensorRT profiles and the sidecars that say what an engine was built from."""
