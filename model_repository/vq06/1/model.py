"""Triton model `vq06`: 16 kHz utterances → semantic codes (25 Hz, 4096 codes). All 30 s pieces of
all requests of an execute() call go through speech_tokenizer_v1.onnx in one padded run."""


class TritonPythonModel:
    def initialize(self, args):
        from python_backends import triton_io
        from python_backends.vq06 import Vq06Tokenizer

        self.io = triton_io
        self.tokenizer = triton_io.tokenizer_instance(args, Vq06Tokenizer.from_settings)

    def execute(self, requests):
        return self.io.respond_codes(requests, self.tokenizer, "vq06_codes")
