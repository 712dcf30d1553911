"""The real CLIP BPE tokenizer (Stable Diffusion's), built offline from the vocabulary inside the openai-clip wheel.

No hub access is needed: the tokenizer is assembled once from `bpe_simple_vocab_16e6.txt.gz` exactly as CLIP's own
simple_tokenizer builds it, saved in the studio's cache, and loaded from there afterwards.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

from studio import fs
from studio.config import cache_dir
from studio.engine import ModelLoadError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

EOT = "<|endoftext|>"
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (same order as CLIP's simple_tokenizer)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _clip_bpe_file() -> Path:
    spec = importlib.util.find_spec("clip")  # locate only: importing the openai-clip package fails here
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the CLIP tokenizer vocabulary is missing: install the openai-clip package")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ModelLoadError(f"the CLIP tokenizer vocabulary is missing: {path} does not exist")
    return path


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's 49,408-token vocabulary and 48,894 merges, built exactly as CLIP's own tokenizer builds them."""
    with gzip.open(_clip_bpe_file()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", EOT]
    return {token: i for i, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def _replace_leftover(_target: Path) -> bool:
    """The cache folder is the studio's own: whatever is there without a tokenizer.json is an incomplete leftover."""
    return True


def _clip_tokenizer_dir() -> Path:
    """cache_dir()/clip-tokenizer: the tokenizer saved once (tokenizer.json, plus vocab.json and merges.txt)."""
    folder = cache_dir() / "clip-tokenizer"
    if (folder / "tokenizer.json").is_file():
        return folder
    with fs.file_lock(folder.with_name("clip-tokenizer.lock")):
        if (folder / "tokenizer.json").is_file():
            return folder
        from transformers import CLIPTokenizer

        vocab, merges = _clip_vocab_and_merges()
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
        with fs.staged_dir(folder, replace=_replace_leftover) as tmp:
            tokenizer.save_pretrained(tmp)
            (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
            (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def clip_tokenizer(pad_token: str = EOT) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (SD's), built offline from the openai-clip wheel and cached in cache_dir().

    SD 1.x pads with "<|endoftext|>"; SD 2.x and SDXL's second tokenizer pad with "!".
    """
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(_clip_tokenizer_dir()), pad_token=pad_token, model_max_length=MAX_LENGTH)
