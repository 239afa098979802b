"""The real CLIP BPE tokenizer, derived offline from the vocabulary file that ships with lora-studio.

Single-file checkpoints carry no tokenizer, and the hub copies (``openai/clip-vit-large-patch14``) cannot be
downloaded here. Every SD text encoder (CLIP-L, OpenCLIP ViT-H, OpenCLIP bigG) uses the same 49,408-token
vocabulary, which OpenAI's CLIP derives from one merges file, ``bpe_simple_vocab_16e6.txt.gz`` (MIT; shipped in
``clip_bpe/`` from the open_clip package, license beside it). ``vocab.json`` / ``merges.txt`` are built from it
exactly as CLIP's ``SimpleTokenizer`` does, so the ids equal the hub files' ("a photo of a cat" ->
49406 320 1125 539 320 2368 49407). Tokenizer configs differ only in the pad token: ``<|endoftext|>`` for CLIP-L,
``!`` for the OpenCLIP encoders (SD 2.x and SDXL's second tokenizer), as in the diffusers model repos.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from trainer.atomic import atomic_dir
from trainer.models.builtin import _bytes_to_unicode, cache_root

BPE_FILE = Path(__file__).parent / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_TOKENIZER_VERSION = "1"
PAD_TOKENS = {"clip_l": "<|endoftext|>", "open_clip": "!"}
# CLIP keeps the first 49152 - 256 - 2 merges: 512 byte symbols + merges + 2 specials = 49408 ids.
_N_MERGES = 49152 - 256 - 2


def write_clip_tokenizer(folder: Path, pad_token: str) -> None:
    """Write vocab.json, merges.txt and tokenizer configs of the CLIP tokenizer into ``folder``."""
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : _N_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


def clip_tokenizer_folder(kind: str) -> Path:
    """The cached tokenizer folder for ``clip_l`` or ``open_clip``, built on first use (about a second)."""
    folder = cache_root() / f"clip-tokenizer-v{CLIP_TOKENIZER_VERSION}" / kind
    if not (folder / "tokenizer_config.json").is_file():
        with atomic_dir(folder) as tmp:
            write_clip_tokenizer(Path(tmp), PAD_TOKENS[kind])
    return folder


def load_clip_tokenizer(kind: str, override: str = "") -> Any:
    """A ``CLIPTokenizer``: from the user's ``model.tokenizer`` folder when given, else the shipped vocabulary.

    An override folder may be a tokenizer folder or a diffusers model folder with ``tokenizer/`` and
    ``tokenizer_2/``; its own pad token is kept.
    """
    from transformers import CLIPTokenizer

    if override:
        root = Path(override).expanduser()
        sub = "tokenizer_2" if kind == "open_clip" and (root / "tokenizer_2").is_dir() else "tokenizer"
        folder = root / sub if (root / sub / "vocab.json").is_file() else root
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    return CLIPTokenizer.from_pretrained(clip_tokenizer_folder(kind), local_files_only=True)
