"""The error types our models raise for bad client input (and for a cancelled request).

Its message always names the input, what was wrong and what is allowed, so a Triton client
can fix its request without reading server logs.
"""


import re

# InvalidInput's message form (optionally prefixed by Triton's ensemble name): how a caller
# recognises an input error of a model it called by BLS, since Triton 2.51 hands BLS callers
# every error with the INTERNAL code
INVALID_INPUT_MESSAGE = re.compile(r"(in ensemble '[^']+', )?input '[^']+': .+; allowed: .+", re.S)


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


class RequestCancelled(RuntimeError):
    """The client cancelled the request or its deadline passed; work for it stops."""


UNAVAILABLE_MESSAGE = re.compile(r"(in ensemble '[^']+', )?unavailable: .+", re.S)
CANCELLED_MESSAGE = re.compile(r"(in ensemble '[^']+', )?cancelled: .+", re.S)


class Unavailable(RuntimeError):
    """The server is shutting down (draining) or the model is stopping: the request was not run
    to its end, and a client may retry it elsewhere. Answered with Triton's UNAVAILABLE code;
    the message starts "unavailable: " so that a BLS caller recognises it (UNAVAILABLE_MESSAGE)."""

    def __init__(self, why: str):
        super().__init__(why if why.startswith("unavailable: ") else f"unavailable: {why}")


# not failures of ours: answered with their own code, never logged as internal errors
EXPECTED_OUTCOMES = (InvalidInput, RequestCancelled, Unavailable)


def outcome(exc: BaseException | None) -> str:
    """The `outcome` label of a finished request (metrics): what the client got."""
    if exc is None:
        return "success"
    if isinstance(exc, InvalidInput):
        return "invalid_input"
    if isinstance(exc, RequestCancelled):
        return "cancelled"
    if isinstance(exc, Unavailable):
        return "unavailable"
    return "error"
