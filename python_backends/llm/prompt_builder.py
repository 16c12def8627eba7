"""Step-Audio-EditX's LLM prompt as token ids: the clone prompt and the edit prompts, built as
EditX's `tts.py` builds them (step_audio_internals.md §2.2, §2.4), with the client input checks.

E(s) below is `tokenizer.encode(s)` with special tokens: `<s>` (id 1) first when `inner_bos`.
Our E encodes every text as text (`TextTokenizer.encode_text`): a "<|EOT|>" or "<audio_5>" the
client typed is no special id; only the `<audio_N>` run (token_str) is (`encode_with_audio`).
EditX's tokenizer_config.json leaves LlamaTokenizer's add_bos_token default (True) in place, so
`inner_bos=True` (EditxSettings' default) is what its code produces: `[1, 4, 1, ▁system, ...]`.
`inner_bos=False` drops that inner `<s>` from every E(...), the ids the chat-template ports
(vLLM-Omni, mlx-speech) feed the model. The leading `[1]` is there in both.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

from ..errors import InvalidInput
from ..settings import LLM, EditxSettings
from . import prompt_templates as T
from .text_tokenizer import TextTokenizer

SPEAKER_PREFIX = "clone_"
HASH_EDGE_SAMPLES = 1000  # the speaker hash reads the first and last 1000 samples
TEXT_FREE_EDITS = ("denoise", "vad")  # instructions without the transcript
AUDIO_TOKEN = re.compile(r"<audio_(0|[1-9][0-9]{0,3})>")
AUDIO_TOKENS = re.compile(r"(?:<audio_(?:0|[1-9][0-9]{0,3})>)+")
BLANK = "is blank (only whitespace or invisible format characters)"
# the clone system prompt around its audio tokens, the one part of it that is not text
CLONE_HEAD, CLONE_TAIL = T.CLONE_SYSTEM_TEMPLATE.split("{prompt_wav_tokens}")


# --------------------------------------------------------------------------- speaker name

def channel_major(interleaved: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved float32 frames (what our clients send) → [channels, samples], the layout
    `torchaudio.load` returns."""
    audio = np.asarray(interleaved, dtype=np.float32).reshape(-1)
    if channels < 1:
        raise InvalidInput("channels", f"got {channels}", "an integer >= 1")
    if audio.size == 0:
        raise InvalidInput("waveform", "is empty", "at least one sample")
    if audio.size % channels:
        raise InvalidInput("waveform", f"holds {audio.size} samples, not a multiple of {channels} "
                           "channels", "interleaved frames of `channels` samples")
    return np.ascontiguousarray(audio.reshape(-1, channels).T)


def speaker_name(prompt_text: str, raw_audio_channel_major: np.ndarray) -> str:
    """"clone_" + the first 16 hex digits of sha256(utf-8 prompt text ‖ float32 bytes of the
    first 1000 and last 1000 samples of the flattened [channels, samples] recording, or all of
    it when it has at most 2000 samples) — EditX's `generate_clone_voice_id`. The name is part
    of the clone prompt, so token parity needs it."""
    flat = np.ascontiguousarray(raw_audio_channel_major, dtype="<f4").reshape(-1)
    if flat.size > 2 * HASH_EDGE_SAMPLES:
        flat = np.concatenate([flat[:HASH_EDGE_SAMPLES], flat[-HASH_EDGE_SAMPLES:]])
    digest = hashlib.sha256(prompt_text.encode("utf-8") + flat.tobytes()).hexdigest()
    return SPEAKER_PREFIX + digest[:16]


# --------------------------------------------------------------------------- input checks

def is_blank(text: str) -> bool:
    """Nothing to speak: only whitespace and invisible format characters (Unicode category Cf:
    U+200B, U+200C, U+200D, U+2060, U+FEFF, ...), or nothing at all."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def _missing(text: str | None) -> str:
    """What an edit's blank text is called: nothing at all, or blank."""
    return BLANK if text else "is empty"


def check_text(name: str, text: str, limit: int, setting: str, required: bool = True) -> str:
    """At most `limit` characters (`setting` names the EditxSettings field); not blank when
    `required`."""
    if required and not text:
        raise InvalidInput(name, "is empty", "non-empty UTF-8 text")
    if required and is_blank(text):
        raise InvalidInput(name, BLANK, "text with at least one visible character")
    if len(text) > limit:
        raise InvalidInput(name, f"has {len(text)} characters",
                           f"at most {limit} characters (EditxSettings.{setting})")
    return text


def check_audio_tokens(name: str, token_str: str) -> str:
    """A non-empty run of `<audio_N>` with 0 <= N < 5120 and nothing else, as token_merge writes."""
    if not token_str:
        raise InvalidInput(name, "is empty", "one or more <audio_N> tokens")
    if not AUDIO_TOKENS.fullmatch(token_str):
        raise InvalidInput(name, "is not a sequence of <audio_N> tokens",
                           "only <audio_N> tokens, N a decimal integer without leading zeros")
    largest = max(int(n) for n in AUDIO_TOKEN.findall(token_str))
    if largest >= LLM.audio_tokens:
        raise InvalidInput(name, f"holds <audio_{largest}>",
                           f"<audio_N> with 0 <= N < {LLM.audio_tokens}")
    return token_str


def check_prompt_length(tok: TextTokenizer, ids: list[int], settings: EditxSettings,
                        texts: dict[str, str], token_str: str) -> list[int]:
    """The LLM generates up to max_length ids in all: the prompt must leave room for one. A too
    long prompt is blamed on its biggest input (`texts`: the client's texts in it, by input
    name), with the ids of each part: a text's as it encodes alone, the template's the rest."""
    if len(ids) < settings.max_length:
        return ids
    parts = {name: len(tok.encode_text(text, add_bos=False, first=False))
             for name, text in texts.items()}
    parts["token_str"] = len(AUDIO_TOKEN.findall(token_str))
    biggest = max(parts, key=parts.get)
    parts["template"] = len(ids) - sum(parts.values())
    sizes = " + ".join(f"{name} {count} ids" for name, count in parts.items())
    raise InvalidInput(biggest, f"the prompt ({sizes}) has {len(ids)} ids",
                       f"a prompt of fewer than max_length {settings.max_length} ids "
                       "(EditxSettings.max_length)")


# --------------------------------------------------------------------------- prompts

def _turns(tok: TextTokenizer, system: list[int], human: list[int], inner_bos: bool) -> list[int]:
    """[1] + [4] system [3] + [4] E(human\\n) human [3] + [4] E(assistant\\n), `system` being
    E(system\\n + the system prompt): the shared frame of both prompts; no EOT after the
    assistant header."""
    def encode(text: str) -> list[int]:
        return tok.encode_text(text, add_bos=inner_bos)

    return ([LLM.bos_id, LLM.bot_id] + system + [LLM.eot_id]
            + [LLM.bot_id] + encode(T.HUMAN_HEADER) + human + [LLM.eot_id]
            + [LLM.bot_id] + encode(T.ASSISTANT_HEADER))


def clone_prompt_ids(tok: TextTokenizer, speaker: str, prompt_text: str,
                     prompt_audio_tokens: str, target_text: str, inner_bos: bool) -> list[int]:
    """EditX `_encode_audio_edit_clone_prompt`: the clone template in the system turn, the target
    text as the human turn. The target text is encoded as E("\\n" + text) minus the first
    len(E("\\n")) ids, which keeps the dummy-prefix "▁" off its first word."""
    head = T.SYSTEM_HEADER + CLONE_HEAD.format(speaker=speaker, prompt_text=prompt_text)
    system = tok.encode_with_audio(head, prompt_audio_tokens, CLONE_TAIL, inner_bos)
    newline = tok.encode_text("\n", add_bos=inner_bos)
    target = tok.encode_text("\n" + target_text, add_bos=inner_bos)[len(newline):]
    return _turns(tok, system, target, inner_bos)


def edit_instruction(edit_type: str, edit_info: str, text: str, new_text: str | None) -> str:
    """EditX `_build_audio_edit_instruction`, with the options checked against its lists."""
    if edit_type not in T.EDIT_OPTIONS:
        raise InvalidInput("edit_type", f"is {edit_type!r}", ", ".join(T.EDIT_OPTIONS))
    options = T.EDIT_OPTIONS[edit_type]
    if options and edit_info not in options:
        raise InvalidInput("edit_info", f"is {edit_info!r} for edit_type {edit_type!r}",
                           ", ".join(options))
    if not options and edit_info:
        raise InvalidInput("edit_info", f"is {edit_info!r} for edit_type {edit_type!r}",
                           "empty: this edit type takes no option")
    if edit_type in TEXT_FREE_EDITS:
        return T.DENOISE if edit_type == "denoise" else T.VAD
    if is_blank(text):
        raise InvalidInput("prompt_text", f"{_missing(text)} for edit_type {edit_type!r}",
                           "the transcript of the audio to edit")
    if edit_type in ("emotion", "speed"):
        return (T.EMOTION_OR_SPEED_REMOVE.format(text=text) if edit_info == T.REMOVE
                else T.EMOTION_OR_SPEED.format(info=edit_info, text=text))
    if edit_type == "style":
        return (T.STYLE_REMOVE.format(text=text) if edit_info == T.REMOVE
                else T.STYLE.format(info=edit_info, text=text))
    if new_text is None or is_blank(new_text):
        raise InvalidInput("target_text", f"{_missing(new_text)} for edit_type 'paralinguistic'",
                           "the new text, with its non-verbal sound tags")
    return T.PARALINGUISTIC.format(new_text=new_text, text=text)


def edit_prompt_ids(tok: TextTokenizer, edit_type: str, edit_info: str, text: str,
                    audio_tokens: str, inner_bos: bool, new_text: str | None = None) -> list[int]:
    """EditX `_encode_audio_edit_prompt`: the edit system prompt, then the human turn
    E(instruction + "\\n" + audio tokens (stripped) + "\\n"). `text` is the edited audio's
    transcript, `new_text` the target of a paralinguistic edit (unused by the other types)."""
    instruction = edit_instruction(edit_type, edit_info, text, new_text)
    system = tok.encode_text(T.SYSTEM_HEADER + T.AUDIO_EDIT_SYSTEM_PROMPT, add_bos=inner_bos)
    human = tok.encode_with_audio(instruction + "\n", audio_tokens.strip(), "\n", inner_bos)
    return _turns(tok, system, human, inner_bos)


def _edit_texts(edit_type: str, text: str, new_text: str) -> dict[str, str]:
    """The client's texts an edit prompt holds, by input name."""
    if edit_type in TEXT_FREE_EDITS:
        return {}
    if edit_type == "paralinguistic":
        return {"prompt_text": text, "target_text": new_text}
    return {"prompt_text": text}


# --------------------------------------------------------------------------- one request

def clone_request_ids(tok: TextTokenizer, settings: EditxSettings, prompt_text: str,
                      target_text: str, token_str: str, waveform: np.ndarray,
                      channels: int) -> tuple[list[int], str]:
    """The `prompt_builder` model's request, checked: → (LLM input ids, speaker name).
    `waveform` is the raw prompt recording as the client sent it (interleaved)."""
    check_text("prompt_text", prompt_text, settings.max_prompt_text_chars, "max_prompt_text_chars")
    check_text("target_text", target_text, settings.max_target_text_chars, "max_target_text_chars")
    check_audio_tokens("token_str", token_str)
    speaker = speaker_name(prompt_text, channel_major(waveform, channels))
    ids = clone_prompt_ids(tok, speaker, prompt_text, token_str, target_text, settings.inner_bos)
    texts = {"prompt_text": prompt_text, "target_text": target_text}
    return check_prompt_length(tok, ids, settings, texts, token_str), speaker


def edit_request_ids(tok: TextTokenizer, settings: EditxSettings, prompt_text: str,
                     target_text: str, token_str: str, edit_type: str, edit_info: str) -> list[int]:
    """The `edit_prompt_builder` model's request, checked: → LLM input ids. `prompt_text` is the
    transcript of the audio to edit, `target_text` the new text of a paralinguistic edit."""
    check_text("prompt_text", prompt_text, settings.max_prompt_text_chars, "max_prompt_text_chars",
               required=False)
    check_text("target_text", target_text, settings.max_target_text_chars, "max_target_text_chars",
               required=False)
    check_audio_tokens("token_str", token_str)
    ids = edit_prompt_ids(tok, edit_type, edit_info, prompt_text, token_str, settings.inner_bos,
                          new_text=target_text)
    texts = _edit_texts(edit_type, prompt_text, target_text)
    return check_prompt_length(tok, ids, settings, texts, token_str)
