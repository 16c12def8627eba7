"""Triton model `vq02`: 16 kHz utterances → linguistic codes (16.7 Hz, 1024 codes). All requests of
an execute() call go through the streaming-equivalent Paraformer encoder + k-means in one pass."""


class TritonPythonModel:
    def initialize(self, args):
        from python_backends.serving import tokenizer_models
        from python_backends.tokenizer.vq02 import Vq02Tokenizer

        self.serve = tokenizer_models
        self.tokenizer = tokenizer_models.tokenizer_instance(args, Vq02Tokenizer.from_settings)

    def execute(self, requests):
        return self.serve.respond_codes(requests, self.tokenizer, "vq02_codes")
