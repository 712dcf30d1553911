"""A1111 prompt syntax: attention weights, BREAK, 75-token chunks, and `<lora:…>` tags. Pure Python, no torch.

Written from the behaviour A1111's wiki documents ("Attention/emphasis", "BREAK", "Infinite prompt length",
"Extra networks"); no code is taken from the webui (AGPL). What it accepts:

- `(x)` multiplies the attention to x by 1.1, `((x))` by 1.21, `[x]` divides it by 1.1, `(x:1.3)` multiplies it
  by 1.3 (whitespace around the number allowed, `(x:-0.5)` too); nesting multiplies.
- `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters; any other backslash is a literal backslash.
- Unbalanced brackets behave as in A1111: a `)` or `]` with nothing open is literal text; a `(` or `[` never
  closed applies to everything after it; `(x:1.3)`'s `:1.3)` with no `(` open is literal text; a `:` not followed by
  a number and `)` is literal text, so `(x:)` is "x:" ×1.1.
- `BREAK` (uppercase, a word on its own) ends the current 75-token chunk. Deliberate difference: A1111 multiplies
  its internal BREAK marker when it sits inside brackets (`(a BREAK b)`), which turns it into the literal word; here
  BREAK always breaks.
- `<kind:args>` extra-network tags are never text for CLIP (A1111 removes every such tag from the prompt).
  `<lora:NAME>`, `<lora:NAME:W>`, `<lora:NAME:TE:UNET>`, `te=`/`unet=` named arguments are LoRA tags
  (extract_loras); `<lyco:…>` is the same (A1111 ≥ 1.5 handles LyCORIS files in its built-in Lora extension under
  both names). Other kinds (`<hypernet:…>`) are not supported: removed, with a warning (syntax_warnings).
- Not supported, with a warning: prompt editing `[from:to:when]`, alternation `[a|b]`, composable `AND`. Their
  text is read with the rules above (so `[a:b:0.5]` is the text "a:b:0.5" ÷1.1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from studio.types import RequestError

ATTENTION_UP = 1.1  # ( ) multiplies by this; [ ] multiplies by 1 / this
CHUNK_LENGTH = 75  # tokens per chunk, without the start and end tokens (CLIP's 77)
COMMA_BACKTRACK = 20  # A1111's default "Prompt word wrap length limit"
LORA_KINDS = ("lora", "lyco")

_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_ESCAPED = re.compile(r"\\[()\[\]\\]")
_EDITING = re.compile(r"\[[^\[\]]*:\s*[+-]?[\d.]+\s*\]")
_ALTERNATION = re.compile(r"\[[^\[\]]*\|[^\[\]]*\]")
_AND = re.compile(r"\bAND\b")


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text with one attention weight; `is_break` marks a BREAK (its text/weight are unused)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


BREAK = Fragment("BREAK", 1.0, is_break=True)


@dataclass(frozen=True)
class LoraTag:
    """`<lora:name:weight>`: `weight` applies to the text encoder(s) and, unless `unet_weight` is given
    (`<lora:name:te:unet>` or `unet=`), to the UNet as well."""

    name: str
    weight: float = 1.0
    unet_weight: float | None = None

    @property
    def unet_multiplier(self) -> float:
        return self.weight if self.unet_weight is None else self.unet_weight


@dataclass
class Chunk:
    """Up to CHUNK_LENGTH prompt tokens with their weights (no start/end token, no padding)."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


@dataclass
class _Piece:
    text: str
    weight: float = 1.0
    is_break: bool = False


class _Parser:
    """One pass over the text; brackets are stacks of positions in `pieces` (a bracket applies to every piece
    emitted after it opened, so an unclosed bracket applies to the rest of the prompt)."""

    def __init__(self, text: str, field_name: str):
        self.text = text
        self.field = field_name
        self.pieces: list[_Piece] = []
        self.round: list[int] = []
        self.square: list[int] = []
        self.buffer: list[str] = []

    def flush(self) -> None:
        if not self.buffer:
            return
        for i, part in enumerate(_BREAK.split("".join(self.buffer))):
            if i:
                self.pieces.append(_Piece("BREAK", 1.0, is_break=True))
            if part:
                self.pieces.append(_Piece(part))
        self.buffer.clear()

    def multiply(self, start: int, factor: float) -> None:
        for piece in self.pieces[start:]:
            if not piece.is_break:
                piece.weight *= factor

    def close(self, stack: list[int], factor: float) -> None:
        self.flush()
        self.multiply(stack.pop(), factor)

    def weight_close(self, match: re.Match[str]) -> None:
        try:
            factor = float(match.group(1))
        except ValueError:
            raise RequestError(
                self.field, match.group(0), f"{match.group(1)!r} in {match.group(0)!r} is not a number"
            ) from None
        self.close(self.round, factor)

    def run(self) -> list[Fragment]:
        text, i = self.text, 0
        while i < len(text):
            char = text[i]
            if char == "\\" and text[i + 1 : i + 2] in ("(", ")", "[", "]", "\\"):
                self.buffer.append(text[i + 1])
                i += 2
                continue
            match = _WEIGHT.match(text, i) if char == ":" else None
            if char in "([":
                self.flush()
                (self.round if char == "(" else self.square).append(len(self.pieces))
            elif match and self.round:
                self.weight_close(match)
                i = match.end()
                continue
            elif char == ")" and self.round:
                self.close(self.round, ATTENTION_UP)
            elif char == "]" and self.square:
                self.close(self.square, 1 / ATTENTION_UP)
            else:
                self.buffer.append(char)
            i += 1
        self.flush()
        for start in self.round:  # unclosed brackets apply to the rest of the prompt (round ones first)
            self.multiply(start, ATTENTION_UP)
        for start in self.square:
            self.multiply(start, 1 / ATTENTION_UP)
        return _merge(self.pieces)


def _merge(pieces: list[_Piece]) -> list[Fragment]:
    """Adjacent pieces with the same weight become one fragment (tokenized together, as A1111 does)."""
    out: list[Fragment] = []
    for piece in pieces:
        if piece.is_break:
            out.append(BREAK)
        elif out and not out[-1].is_break and out[-1].weight == piece.weight:
            out[-1] = Fragment(out[-1].text + piece.text, piece.weight)
        else:
            out.append(Fragment(piece.text, piece.weight))
    return out or [Fragment("", 1.0)]


def parse_prompt(text: str, field: str = "prompt") -> list[Fragment]:
    """A1111 prompt text -> weighted fragments and BREAK markers (extra-network tags removed).

    `field` names the request field in errors: a weight that is not a number (`(x:1.2.3)`) is a RequestError.
    Never empty: a prompt with no text gives [Fragment("", 1.0)].
    """
    return _Parser(_NETWORK_TAG.sub("", text), field).run()


def _number(value: str, field: str, tag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise RequestError(field, tag, f"{value.strip()!r} in {tag} is not a number") from None


def _lora_tag(args: str, tag: str, field: str) -> LoraTag:
    """`name[:te[:unet]]` with optional `te=` / `unet=` named arguments (A1111's Lora tag arguments)."""
    parts = [part.strip() for part in args.split(":")]
    name, positional, named = parts[0], [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            named[key.strip()] = value
        else:
            positional.append(part)
    if not name:
        raise RequestError(field, tag, f"{tag} has no LoRA name")
    unknown = sorted(set(named) - {"te", "unet"})
    if unknown or len(positional) > 2:
        extra = ", ".join(unknown) if unknown else positional[2]
        accepted = "<lora:name>, <lora:name:weight>, <lora:name:te_weight:unet_weight>, te=, unet="
        raise RequestError(field, tag, f"{tag}: {extra!r} is not supported (accepted: {accepted})")
    te = named.get("te", positional[0] if positional else None)
    unet = named.get("unet", positional[1] if len(positional) > 1 else None)
    weight = 1.0 if te is None else _number(te, field, tag)
    return LoraTag(name, weight, None if unet is None else _number(unet, field, tag))


def _combine(a: LoraTag, b: LoraTag) -> LoraTag:
    """The same LoRA tagged twice: A1111 applies both, and a LoRA's effect is linear in its weight."""
    unet = None if a.unet_weight is None and b.unet_weight is None else a.unet_multiplier + b.unet_multiplier
    return LoraTag(a.name, a.weight + b.weight, unet)


def extract_loras(text: str, field: str = "prompt") -> tuple[str, list[LoraTag]]:
    """Remove `<lora:…>` / `<lyco:…>` tags from `text` -> (text without them, tags in order of first appearance).

    The tags are replaced by nothing (surrounding spaces and commas stay, as in A1111). A name tagged twice gives
    one LoraTag with the weights added. A weight that is not a number, or an unsupported argument, is a
    RequestError naming `field`. Other extra-network tags are left in the text (parse_prompt drops them and
    syntax_warnings reports them).
    """
    tags: dict[str, LoraTag] = {}

    def take(match: re.Match[str]) -> str:
        if match.group(1) not in LORA_KINDS:
            return match.group(0)
        tag = _lora_tag(match.group(2), match.group(0), field)
        tags[tag.name] = _combine(tags[tag.name], tag) if tag.name in tags else tag
        return ""

    return _NETWORK_TAG.sub(take, text), list(tags.values())


def format_weight(weight: float) -> str:
    """1.0 -> "1", 0.75 -> "0.75" (how A1111 writes tag weights)."""
    return f"{weight:g}"


def lora_tag(name: str, weight: float = 1.0) -> str:
    """The tag the UI inserts for a LoRA file: `<lora:name:1>`."""
    return f"<lora:{name}:{format_weight(weight)}>"


def syntax_warnings(text: str, field: str = "prompt") -> list[str]:
    """Warnings for A1111 syntax in text about to be encoded that this studio reads differently from A1111 (see
    the module docstring). LoRA tags should have been taken out by extract_loras: any left are reported too."""
    out = []
    kinds = {m.group(1) for m in _NETWORK_TAG.finditer(text)}
    if kinds & set(LORA_KINDS):
        out.append(f"{field}: <lora:…> tags here were not applied (LoRA tags are read before encoding); ignored")
    others = sorted(kinds - set(LORA_KINDS))
    if others:
        listed = ", ".join(f"<{kind}:…>" for kind in others)
        out.append(f"{field}: {listed} tags are not supported and were ignored (only <lora:…> / <lyco:…>)")
    plain = _ESCAPED.sub("_", _NETWORK_TAG.sub("", text))
    if _EDITING.search(plain):
        out.append(f"{field}: prompt editing [from:to:when] is not supported; its text was used as written")
    if _ALTERNATION.search(plain):
        out.append(f"{field}: alternation [a|b] is not supported; its text was used as written")
    if _AND.search(plain):
        out.append(f"{field}: AND (composable diffusion) is not supported; it was read as a word")
    return out


def chunk_prompt(
    fragments: Iterable[Fragment],
    tokenize: Callable[[str], list[int]],
    comma_token: int | None,
    chunk_length: int = CHUNK_LENGTH,
    comma_backtrack: int = COMMA_BACKTRACK,
) -> list[Chunk]:
    """Tokenize each fragment and cut the tokens into chunks of at most `chunk_length` (never fewer than one).

    BREAK closes the current chunk (an empty one too: `BREAK x` gives an empty chunk, then "x"; a trailing BREAK
    adds nothing). When a chunk is full and its last comma is at most `comma_backtrack` tokens from its end, the
    tokens after that comma move to the next chunk, so a phrase is not cut in two (A1111's "Prompt word wrap
    length limit"; 0 turns it off).
    """
    chunks: list[Chunk] = []
    current = Chunk()
    last_comma = -1

    def close(carry: Chunk | None = None) -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current, last_comma = carry or Chunk(), -1

    for fragment in fragments:
        if fragment.is_break:
            close()
            continue
        for token in tokenize(fragment.text):
            full = len(current.tokens) == chunk_length
            if token == comma_token:
                last_comma = len(current.tokens)
            elif full and comma_backtrack and last_comma >= 0 and chunk_length - last_comma <= comma_backtrack:
                cut = last_comma + 1
                carry = Chunk(current.tokens[cut:], current.weights[cut:])
                del current.tokens[cut:], current.weights[cut:]
                close(carry)
            if len(current.tokens) == chunk_length:
                close()
            current.tokens.append(token)
            current.weights.append(fragment.weight)
    if current.tokens or not chunks:
        close()
    return chunks
