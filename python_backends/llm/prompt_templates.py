"""The text of Step-Audio-EditX's LLM prompts: data that must match the original byte for byte.

Sources (stepfun-ai/Step-Audio-EditX @ aacb90a): `config/prompts.py` (the two system prompts),
`tts.py` (`_build_audio_edit_instruction`: the edit instructions; `_encode_audio_edit_*`: the role
headers) and `config/edit_config.py` (`get_supported_edit_types`: the edit options).
Placeholders are filled with `str.format`, as the original does.
"""
from __future__ import annotations

# config/prompts.py AUDIO_EDIT_CLONE_SYSTEM_PROMPT_TPL ("text: " and "tokens: " end with a space)
CLONE_SYSTEM_TEMPLATE = (
    "Generate audio with the following timbre, prosody and speaking style\n"
    "\n"
    "[speaker_start]\n"
    "speaker name: {speaker}\n"
    "speaker prompt text: \n"
    "{prompt_text}\n"
    "speaker audio tokens: \n"
    "{prompt_wav_tokens}\n"
    "[speaker_end]\n"
)

# config/prompts.py AUDIO_EDIT_SYSTEM_PROMPT
AUDIO_EDIT_SYSTEM_PROMPT = (
    "As a highly skilled audio editing and tuning specialist, you excel in interpreting user "
    "instructions and applying precise adjustments to meet their needs. Your expertise spans a "
    "wide range of enhancement capabilities, including but not limited to:\n"
    "# Emotional Enhancement\n"
    "# Speaking Style Transfer\n"
    "# Non-linguistic Adjustments\n"
    "# Audio Tuning & Editing\n"
    "Note: You will receive instructions in natural language and are expected to accurately "
    "interpret and execute the most suitable audio edits and enhancements.\n"
)

# tts.py: the role headers each turn encodes after <|BOT|>
SYSTEM_HEADER = "system\n"
HUMAN_HEADER = "human\n"
ASSISTANT_HEADER = "assistant\n"

# tts.py _build_audio_edit_instruction; {text} is the edited audio's transcript, {info} the
# edit option, {new_text} the paralinguistic target text
EMOTION_OR_SPEED = "Make the following audio more {info}. The text corresponding to the audio is: {text}\n"
EMOTION_OR_SPEED_REMOVE = "Remove any emotion in the following audio and the reference text is: {text}\n"
STYLE = "Make the following audio more {info} style. The text corresponding to the audio is: {text}\n"
STYLE_REMOVE = "Remove any speaking styles in the following audio and the reference text is: {text}\n"
DENOISE = ("Remove any noise from the given audio while preserving the voice content clearly. "
           "Ensure that the speech quality remains intact with minimal distortion, and eliminate "
           "all noise from the audio.\n")
VAD = ("Remove any silent portions from the given audio while preserving the voice content "
       "clearly. Ensure that the speech quality remains intact with minimal distortion, and "
       "eliminate all silence from the audio.\n")
PARALINGUISTIC = ("Add some non-verbal sounds to make the audio more natural, the new text is : "
                  "{new_text}\n  The text corresponding to the audio is: {text}\n")
REMOVE = "remove"

# config/edit_config.py get_supported_edit_types, without "clone" (that is the clone prompt).
# "speed" also takes "remove": tts.py maps it, like emotion's, to EMOTION_OR_SPEED_REMOVE.
EDIT_OPTIONS: dict[str, tuple[str, ...]] = {
    "emotion": ("happy", "angry", "sad", "humour", "confusion", "disgusted", "empathy",
                "embarrass", "fear", "surprised", "excited", "depressed", "coldness",
                "admiration", "remove"),
    "style": ("serious", "arrogant", "child", "older", "girl", "pure", "sister", "sweet",
              "ethereal", "whisper", "gentle", "recite", "generous", "act_coy", "warm", "shy",
              "comfort", "authority", "chat", "radio", "soulful", "story", "vivid", "program",
              "news", "advertising", "roar", "murmur", "shout", "deeply", "loudly", "remove",
              "exaggerated"),
    "vad": (),
    "denoise": (),
    "paralinguistic": (),
    "speed": ("faster", "slower", "more faster", "more slower", "remove"),
}

# every fixed string of the prompts: TextTokenizer checks that none holds a special piece
TEXTS = (CLONE_SYSTEM_TEMPLATE, AUDIO_EDIT_SYSTEM_PROMPT, SYSTEM_HEADER, HUMAN_HEADER,
         ASSISTANT_HEADER, EMOTION_OR_SPEED, EMOTION_OR_SPEED_REMOVE, STYLE, STYLE_REMOVE, DENOISE,
         VAD, PARALINGUISTIC, *(option for options in EDIT_OPTIONS.values() for option in options))
