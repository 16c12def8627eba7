"""Triton model `vq02`: 16 kHz utterances → linguistic codes (16.7 Hz, 1024 codes). All requests of
an execute() call go through the streaming-equivalent Paraformer encoder + k-means in one pass."""


class TritonPythonModel:
    def initialize(self, args):
        from python_backends import engine_client, triton_io
        from python_backends.vq02 import Vq02Tokenizer

        self.io = triton_io
        settings = triton_io.load_settings(args)
        triton_io.configure_threads(settings)
        engine = engine_client.from_model_args(args)
        self.tokenizer = Vq02Tokenizer.from_settings(settings, engine)
        if engine is None:  # the engine model may not be loaded yet: no BLS during initialize
            self.tokenizer([triton_io.warmup_audio()])

    def execute(self, requests):
        return self.io.respond_codes(requests, self.tokenizer, "vq02_codes")
