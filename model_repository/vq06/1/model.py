"""Triton model `vq06`: 16 kHz utterances → semantic codes (25 Hz, 4096 codes). All 30 s pieces of
all requests of an execute() call go through speech_tokenizer_v1.onnx in one padded run."""


class TritonPythonModel:
    def initialize(self, args):
        from python_backends.serving import tokenizer_models
        from python_backends.tokenizer.vq06 import Vq06Tokenizer

        self.serve = tokenizer_models
        self.tokenizer = tokenizer_models.tokenizer_instance(args, Vq06Tokenizer.from_settings)

    def execute(self, requests):
        return self.serve.respond_codes(requests, self.tokenizer, "vq06_codes")
