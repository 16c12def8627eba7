"""Triton model `vq06`: 16 kHz utterances → semantic codes (25 Hz, 4096 codes). All 30 s pieces of
all requests of an execute() call go through speech_tokenizer_v1.onnx in one padded run."""


class TritonPythonModel:
    def initialize(self, args):
        from python_backends import engine_client, triton_io
        from python_backends.vq06 import Vq06Tokenizer

        self.io = triton_io
        settings = triton_io.load_settings(args)
        triton_io.configure_threads(settings)
        engine = engine_client.from_model_args(args)
        self.tokenizer = Vq06Tokenizer(str(settings.speech_tokenizer_path), settings.device,
                                       settings.num_threads, engine_client=engine)
        if engine is None:  # the engine model may not be loaded yet: no BLS during initialize
            self.tokenizer([triton_io.warmup_audio()])

    def execute(self, requests):
        return self.io.respond_codes(requests, self.tokenizer, "vq06_codes")
