"""The shapes model's CLIP tokenizer: every word of the world is one token, anything else spells out.

A real CLIP BPE tokenizer (``CLIPTokenizer`` reads it), generated offline. Its vocabulary is the 512 byte
symbols plus one merge chain per world word, so "a small red circle ..." is one token per word, as captions
are for a real SD text encoder, while a word the world never uses (a trigger word such as "sks", or "cross")
falls back to letters whose embeddings the base never trained: new to the model, which is what an adapter
needs to attach a new concept to. 600 ids instead of CLIP's 49,408 keep the embedding table small.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.models.builtin import _bytes_to_unicode
from trainer.shapes.world import BACKGROUNDS, BASE_SHAPES, POSITIONS, SHAPE_COLOURS, SIZES

SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def world_words() -> list[str]:
    words = ["a", "on", "background", *BASE_SHAPES, *SHAPE_COLOURS, *SIZES, *BACKGROUNDS]
    for phrase in POSITIONS:
        words += phrase.split()
    return list(dict.fromkeys(words))


def _merge_chain(word: str) -> list[tuple[str, str]]:
    """The merges that join ``word``'s letters left to right into ``word</w>``."""
    pieces = [*word[:-1], word[-1] + "</w>"]
    chain, joined = [], pieces[0]
    for piece in pieces[1:]:
        chain.append((joined, piece))
        joined += piece
    return chain


def _merges(order: list[str]) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    for word in order:
        merges += [m for m in _merge_chain(word) if m not in merges]
    return merges


def _apply_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word (lowest-rank pair first), to check the merge order without a tokenizer."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def world_merges() -> list[tuple[str, str]]:
    """Merge rules under which every world word is one token.

    BPE applies the lowest-ranked pair first, so one word's merges can fire inside another ("la" of "large"
    inside "black") and strand it in pieces. Words that come out in pieces move to the front until none does.
    """
    order = sorted(world_words(), key=len, reverse=True)
    for _ in range(len(order)):
        merges = _merges(order)
        ranks = {m: i for i, m in enumerate(merges)}
        broken = [w for w in order if len(_apply_bpe(w, ranks)) != 1]
        if not broken:
            return merges
        order = broken + [w for w in order if w not in broken]
    raise RuntimeError(f"no merge order makes these one token each: {broken}")


def write_shapes_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    merges = world_merges()
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += [a + b for a, b in merges if a + b not in vocab_list]
    vocab_list += SPECIALS
    (folder / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab_list)}, ensure_ascii=False), encoding="utf-8"
    )
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": SPECIALS[0],
        "eos_token": SPECIALS[1],
        "unk_token": SPECIALS[1],
        "pad_token": SPECIALS[1],
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
