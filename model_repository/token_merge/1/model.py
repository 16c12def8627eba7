"""Triton model `token_merge`: the 2:3 interleave of vq02 and vq06 codes → LLM token ids and the
`<audio_N>` prompt string (python_backends.tokenizer.token_merge)."""


class TritonPythonModel:
    def initialize(self, args):
        import numpy as np

        from python_backends.serving import triton_io
        from python_backends.tokenizer.token_merge import merge_tokens

        self.io = triton_io
        self.merge = merge_tokens
        self.int32 = np.int32

    def _one(self, request):
        io = self.io
        vq02 = io.read_utterance(request, "vq02_codes", self.int32)
        vq06 = io.read_utterance(request, "vq06_codes", self.int32)
        ids, token_str = self.merge(vq02, vq06)
        return [io.tensor("merged_ids", ids), io.bytes_tensor("token_str", token_str)]

    def execute(self, requests):
        return self.io.respond_each(requests, self._one)
