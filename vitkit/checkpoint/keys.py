"""Key tables shared by the Hugging Face and timm readers/writers: one row per tensor kind, a template on each side
with placeholders ({i}: block index; {s}/{u}: ResNet stage/unit), no per-key if-chains.

`rename(state, table)` maps names forward (foreign -> vitkit) or, with `reverse=True`, backward; it returns the
renamed dict and the names no row matched (reported as unexpected by the callers).
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

_DIGITS = r"\d+"


def _regex(template: str, patterns: Optional[dict] = None) -> re.Pattern:
    """'a/{i}/b' -> a regex whose named groups match the placeholders; `patterns` gives a name its own pattern
    (default: digits)."""
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    return re.compile("".join(re.escape(x) if j % 2 == 0 else f"(?P<{x}>{(patterns or {}).get(x, _DIGITS)})"
                              for j, x in enumerate(parts)) + "$")


def compile_table(rows: Iterable[tuple[str, str]]) -> list[tuple[re.Pattern, str, re.Pattern, str]]:
    return [(_regex(a), b, _regex(b), a) for a, b in rows]


def rename(state: dict, table, reverse: bool = False) -> tuple[dict, list[str]]:
    out, unmatched = {}, []
    for k, v in state.items():
        for fwd_rx, fwd_t, back_rx, back_t in table:
            rx, t = (back_rx, back_t) if reverse else (fwd_rx, fwd_t)
            m = rx.match(k)
            if m:
                out[t.format(**m.groupdict())] = v
                break
        else:
            unmatched.append(k)
    return out, unmatched


def block_indices(names: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for n in names if (m := rx.match(n))})


QKV = ("q", "k", "v")


def split_qkv(state: dict) -> dict:
    """vitkit's fused blocks.N.attn.qkv.{weight,bias} -> blocks.N.attn.{q,k,v}.{weight,bias} (other keys kept)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"(.*\.attn)\.qkv\.(weight|bias)$", k)
        if m:
            for p, part in zip(QKV, v.chunk(3, dim=0)):
                out[f"{m.group(1)}.{p}.{m.group(2)}"] = part.contiguous()
        else:
            out[k] = v
    return out


def join_qkv(state: dict) -> dict:
    """The inverse of split_qkv; a block with only some of q/k/v keeps them apart (reported as unexpected)."""
    import torch

    out, groups = {}, {}
    for k, v in state.items():
        m = re.match(r"(.*\.attn)\.([qkv])\.(weight|bias)$", k)
        if m:
            groups.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = (k, v)
        else:
            out[k] = v
    for (prefix, kind), parts in groups.items():
        if set(parts) == set(QKV):
            out[f"{prefix}.qkv.{kind}"] = torch.cat([parts[p][1] for p in QKV], 0)
        else:
            out.update(dict(parts.values()))
    return out
