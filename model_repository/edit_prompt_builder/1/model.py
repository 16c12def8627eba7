"""Triton model `edit_prompt_builder`: an edit request (audio transcript, its `<audio_N>` string,
edit type and option, and the new text of a paralinguistic edit) → the Step-Audio-EditX edit
prompt as LLM input ids (python_backends.llm.prompt_builder)."""


class TritonPythonModel:
    def initialize(self, args):
        import numpy as np

        from python_backends.serving import model_config, triton_io
        from python_backends.llm.prompt_builder import edit_request_ids

        self.io, self.np = triton_io, np
        self.settings, self.tokenizer = model_config.text_tokenizer_instance(args)
        self.build = edit_request_ids

    def _one(self, request):
        read_text = self.io.read_text
        ids = self.build(
            self.tokenizer, self.settings, read_text(request, "prompt_text"),
            read_text(request, "target_text"), read_text(request, "token_str"),
            read_text(request, "edit_type"), read_text(request, "edit_info"))
        return [self.io.tensor("input_ids", self.np.asarray(ids, self.np.int32))]

    def execute(self, requests):
        return self.io.respond_each(requests, self._one)
