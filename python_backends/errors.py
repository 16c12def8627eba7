"""The one error type our models raise for bad client input.

Its message always names the input, what was wrong and what is allowed, so a Triton client
can fix its request without reading server logs.
"""


class InvalidInput(ValueError):
    def __init__(self, input_name: str, problem: str, allowed: str):
        self.input_name = input_name
        self.problem = problem
        self.allowed = allowed
        super().__init__(f"input '{input_name}': {problem}; allowed: {allowed}")


class ForwardedInvalidInput(InvalidInput):
    """A called model (BLS) refused the input: its message is passed on unchanged."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.input_name, self.problem, self.allowed = "", message, ""
