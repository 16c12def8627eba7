"""Triton model `prompt_builder`: prompt transcript + target text + the prompt's `<audio_N>`
string + the raw prompt recording → the Step-Audio-EditX clone prompt as LLM input ids, and the
speaker name hashed into it (python_backends.llm.prompt_builder)."""


class TritonPythonModel:
    def initialize(self, args):
        import numpy as np

        from python_backends.serving import model_config, triton_io
        from python_backends.llm.prompt_builder import clone_request_ids

        self.io, self.np = triton_io, np
        self.settings, self.tokenizer = model_config.text_tokenizer_instance(args)
        self.build = clone_request_ids

    def _one(self, request):
        io, read_text = self.io, self.io.read_text
        ids, speaker = self.build(
            self.tokenizer, self.settings, read_text(request, "prompt_text"),
            read_text(request, "target_text"), read_text(request, "token_str"),
            io.read_utterance(request, "waveform"), io.read_scalar(request, "channels"))
        return [io.tensor("input_ids", self.np.asarray(ids, self.np.int32)),
                io.bytes_tensor("speaker", speaker)]

    def execute(self, requests):
        return self.io.respond_each(requests, self._one)
