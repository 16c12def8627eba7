"""What the thin model.py files of the EditX models (LLM, prompt builder, decoder, clone) share
beyond python_backends.triton_io: their settings and UTF-8 text inputs."""
from __future__ import annotations

import dataclasses

import numpy as np

from . import triton_io
from .errors import InvalidInput
from .settings import EditxSettings

SETTINGS_PARAMETER = "editx_settings"


def load_editx_settings(args: dict) -> EditxSettings:
    """The EditxSettings `build_repository.py --editx` wrote into the config, on this instance's
    device."""
    text = triton_io.model_parameters(args).get(SETTINGS_PARAMETER, "")
    if text.strip() in ("", "{}"):
        raise RuntimeError(f"model '{args.get('model_name')}' config lacks the "
                           f"'{SETTINGS_PARAMETER}' parameter; build the repository with "
                           "build_scripts/build_repository.py --editx DIR")
    settings = EditxSettings.from_json(text)
    return dataclasses.replace(settings, device=triton_io.instance_device(args))


def read_text(request, name: str) -> str:
    """A BYTES [1] input (after the batch dimension) decoded as UTF-8."""
    values = triton_io.read_utterance(request, name, np.object_)
    if values.size != 1:
        raise InvalidInput(name, f"holds {values.size} strings", "exactly one UTF-8 string")
    value = values[0]
    if isinstance(value, str):
        return value
    raw = bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(name, f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                           f"{exc.start})", "UTF-8 text") from None


def text_tokenizer_instance(args: dict):
    """(settings, TextTokenizer over the settings' tokenizer.model): what the prompt builder
    models hold."""
    from .llm.text_tokenizer import TextTokenizer

    settings = load_editx_settings(args)
    return settings, TextTokenizer(settings.text_tokenizer_path)
