"""Original merge loops: `wav2token`'s offset list and `merge_vq0206_to_token_str`."""
from __future__ import annotations


def reference_merge(vq02: list[int], vq06: list[int]) -> tuple[list[int], str]:
    ids: list[int] = []
    text = ""
    i = j = 0
    while i < len(vq02) - 1 and j < len(vq06) - 2:
        ids += [vq02[i] + 65536, vq02[i + 1] + 65536,
                vq06[j] + 65536 + 1024, vq06[j + 1] + 65536 + 1024, vq06[j + 2] + 65536 + 1024]
        text += "".join(f"<audio_{x}>" for x in (vq02[i], vq02[i + 1]))
        text += "".join(f"<audio_{x + 1024}>" for x in (vq06[j], vq06[j + 1], vq06[j + 2]))
        i += 2
        j += 3
    return ids, text
