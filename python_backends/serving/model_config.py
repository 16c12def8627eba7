"""What a Triton model reads from its own config: the `parameters` that `build_repository.py`
wrote (tokenizer or EditX settings), and the instance's device."""
from __future__ import annotations

import dataclasses
import json

from ..settings import EditxSettings, TokenizerSettings

SETTINGS_PARAMETER = "tokenizer_settings"
EDITX_SETTINGS_PARAMETER = "editx_settings"


def model_parameters(args: dict) -> dict[str, str]:
    """The `parameters { key: ... value: { string_value: ... } }` entries of the model config."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def instance_device(args: dict) -> str:
    """"cuda:N" for a KIND_GPU instance (N = model_instance_device_id), otherwise "cpu"."""
    if args.get("model_instance_kind", "CPU").upper() == "GPU":
        return f"cuda:{int(args.get('model_instance_device_id', 0))}"
    return "cpu"


def load_settings(args: dict) -> TokenizerSettings:
    """The settings `build_repository.py` wrote into the config, on this instance's device."""
    params = model_parameters(args)
    if SETTINGS_PARAMETER not in params:
        raise RuntimeError(f"model '{args.get('model_name')}' config lacks the "
                           f"'{SETTINGS_PARAMETER}' parameter; build the repository with "
                           "build_scripts/build_repository.py")
    settings = TokenizerSettings.from_json(params[SETTINGS_PARAMETER])
    return dataclasses.replace(settings, device=instance_device(args))


def load_editx_settings(args: dict) -> EditxSettings:
    """The EditxSettings `build_repository.py --editx` wrote into the config, on this instance's
    device."""
    text = model_parameters(args).get(EDITX_SETTINGS_PARAMETER, "")
    if text.strip() in ("", "{}"):
        raise RuntimeError(f"model '{args.get('model_name')}' config lacks the "
                           f"'{EDITX_SETTINGS_PARAMETER}' parameter; build the repository with "
                           "build_scripts/build_repository.py --editx DIR")
    settings = EditxSettings.from_json(text)
    return dataclasses.replace(settings, device=instance_device(args))


def text_tokenizer_instance(args: dict):
    """(settings, TextTokenizer over the settings' tokenizer.model): what the prompt builder
    models hold."""
    from ..llm.text_tokenizer import TextTokenizer

    settings = load_editx_settings(args)
    return settings, TextTokenizer(settings.text_tokenizer_path)
