"""Triton model `preprocess`: any-rate, interleaved multi-channel float32 audio → the 16 kHz mono,
peak-normalised, silence-trimmed utterance both tokenizers read (python_backends.tokenizer.preprocess)."""


class TritonPythonModel:
    def initialize(self, args):
        from python_backends.serving import model_config, triton_io
        from python_backends.serving.tokenizer_models import warmup_audio
        from python_backends.tokenizer.preprocess import preprocess

        self.io = triton_io
        self.settings = model_config.load_settings(args)
        self.preprocess = preprocess
        preprocess(warmup_audio(1.0, 44100), 44100, self.settings)  # warm-up

    def _one(self, request):
        io = self.io
        waveform = io.read_utterance(request, "waveform")
        sample_rate = io.read_scalar(request, "sample_rate")
        channels = io.read_scalar(request, "channels", default=1)
        audio = self.preprocess(waveform, sample_rate, self.settings, channels)
        return [io.tensor("audio_16k", audio)]

    def execute(self, requests):
        return self.io.respond_each(requests, self._one)
