"""studio.prompts: A1111 attention syntax, BREAK, LoRA tags, unsupported-syntax warnings, 75-token chunking."""

from __future__ import annotations

import pytest

from studio.prompts import (
    BREAK,
    Chunk,
    Fragment,
    LoraTag,
    chunk_prompt,
    extract_loras,
    format_weight,
    lora_tag,
    parse_prompt,
    syntax_warnings,
)
from studio.types import RequestError


def weights(text: str) -> list[tuple[str, float]]:
    return [("BREAK" if f.is_break else f.text, round(f.weight, 6)) for f in parse_prompt(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a fox", [("a fox", 1.0)]),
        ("a (fox)", [("a ", 1.0), ("fox", 1.1)]),
        ("a ((fox))", [("a ", 1.0), ("fox", 1.21)]),
        ("a (((fox)))", [("a ", 1.0), ("fox", 1.331)]),
        ("a [fox]", [("a ", 1.0), ("fox", round(1 / 1.1, 6))]),
        ("a [[fox]]", [("a ", 1.0), ("fox", round(1 / 1.21, 6))]),
        ("a (fox:1.3)", [("a ", 1.0), ("fox", 1.3)]),
        ("a (fox: 1.3 )", [("a ", 1.0), ("fox", 1.3)]),
        ("a (fox:0.5)", [("a ", 1.0), ("fox", 0.5)]),
        ("a (fox:-1)", [("a ", 1.0), ("fox", -1.0)]),
        ("a (fox:.5)", [("a ", 1.0), ("fox", 0.5)]),
        ("((fox:1.3))", [("fox", 1.43)]),
        ("(a (b:1.5) c)", [("a ", 1.1), ("b", 1.65), (" c", 1.1)]),
        ("(a [b] c)", [("a ", 1.1), ("b", 1.0), (" c", 1.1)]),
        ("(a:b:1.2)", [("a:b", 1.2)]),  # only the last ":number)" is the weight
        ("(x:1.0) y", [("x y", 1.0)]),  # same weight: one fragment, tokenized as one text
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        ("", [("", 1.0)]),
        ("<lora:x:1>", [("", 1.0)]),
    ],
)
def test_attention_weights(text, expected):
    assert weights(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"a \(fox\)", [("a (fox)", 1.0)]),
        (r"\[fox\]", [("[fox]", 1.0)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        (r"a \\ b", [("a \\ b", 1.0)]),  # \\ is one literal backslash
        (r"a \n b", [("a \\n b", 1.0)]),  # any other backslash stays
        (r"(a \) b)", [("a ) b", 1.1)]),
        ("anime_\\(character\\)", [("anime_(character)", 1.0)]),
    ],
)
def test_escapes_are_literal(text, expected):
    assert weights(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(unbalanced", [("unbalanced", 1.1)]),  # unclosed: applies to the rest
        ("a (b c", [("a ", 1.0), ("b c", 1.1)]),
        ("a [b c", [("a ", 1.0), ("b c", round(1 / 1.1, 6))]),
        ("((a) b", [("a", 1.21), (" b", 1.1)]),
        ("a) b] c", [("a) b] c", 1.0)]),  # nothing open: literal
        ("a :1.2) b", [("a :1.2) b", 1.0)]),  # a weight with no "(" open: literal
        ("(x:)", [("x:", 1.1)]),  # ":" without a number: literal
        ("(x:abc)", [("x:abc", 1.1)]),
        ("(a [b) c]", [("a ", 1.1), ("b", 1.0), (" c", round(1 / 1.1, 6))]),  # round and square close separately
        ("[a (b] c)", [("a ", round(1 / 1.1, 6)), ("b", 1.0), (" c", 1.1)]),
    ],
)
def test_unbalanced_brackets(text, expected):
    assert weights(text) == expected


def test_documented_example():
    got = weights("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert got == [
        ("a ", 1.0),
        ("house", round(1.3 * 1.1 * 1.1, 6)),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", round(1.1**4, 6)),
        (".", 1.1),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a BREAK b", [("a", 1.0), ("BREAK", 1.0), ("b", 1.0)]),
        ("a, BREAK, b", [("a,", 1.0), ("BREAK", 1.0), (", b", 1.0)]),
        ("a\nBREAK\nb", [("a", 1.0), ("BREAK", 1.0), ("b", 1.0)]),
        ("(a BREAK b)", [("a", 1.1), ("BREAK", 1.0), ("b", 1.1)]),  # breaks inside brackets too
        ("BREAK a", [("BREAK", 1.0), ("a", 1.0)]),
        ("a break b", [("a break b", 1.0)]),  # uppercase only
        ("BREAKING xBREAK BREAK_", [("BREAKING xBREAK BREAK_", 1.0)]),  # a word on its own only
    ],
)
def test_break(text, expected):
    assert weights(text) == expected


def test_break_marker_is_flagged():
    fragments = parse_prompt("a BREAK b")
    assert fragments[1] == BREAK and fragments[1].is_break and not fragments[0].is_break


def test_weight_that_is_not_a_number_names_the_field():
    with pytest.raises(RequestError) as err:
        parse_prompt("a (fox:1.2.3)", field="negative_prompt")
    assert err.value.field == "negative_prompt" and "1.2.3" in str(err.value)
    with pytest.raises(RequestError):
        parse_prompt("(fox:.)")


def test_extra_network_tags_are_not_text():
    assert weights("a <lora:x:0.5> fox <hypernet:y:1>") == [("a  fox ", 1.0)]
    assert weights("(<lora:x:1>fox)") == [("fox", 1.1)]


# ---- LoRA tags ---------------------------------------------------------------------------------------------------


def test_extract_loras():
    text, tags = extract_loras("1girl, <lora:fubuki:1> <lora:space_hopper:0.7>, smile")
    assert text == "1girl,  , smile"
    assert tags == [LoraTag("fubuki", 1.0), LoraTag("space_hopper", 0.7)]


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("<lora:a>", LoraTag("a", 1.0)),
        ("<lora:a:0>", LoraTag("a", 0.0)),
        ("<lora:a:-0.5>", LoraTag("a", -0.5)),
        ("<lora:a: 0.8 >", LoraTag("a", 0.8)),
        ("<lora:my lora:0.8>", LoraTag("my lora", 0.8)),
        ("<lora:a:0.8:0.2>", LoraTag("a", 0.8, 0.2)),
        ("<lora:a:te=0.3:unet=0.6>", LoraTag("a", 0.3, 0.6)),
        ("<lora:a:unet=0.6>", LoraTag("a", 1.0, 0.6)),
        ("<lyco:a:0.4>", LoraTag("a", 0.4)),  # A1111 ≥ 1.5: the Lora extension answers to both names
    ],
)
def test_lora_tag_forms(tag, expected):
    text, tags = extract_loras(f"x {tag} y")
    assert text == "x  y" and tags == [expected]


def test_unet_multiplier_defaults_to_weight():
    assert LoraTag("a", 0.7).unet_multiplier == 0.7
    assert LoraTag("a", 0.7, 0.2).unet_multiplier == 0.2


def test_same_lora_twice_adds_weights():
    _, tags = extract_loras("<lora:a:0.5> <lora:b> <lora:a:0.25>")
    assert tags == [LoraTag("a", 0.75), LoraTag("b", 1.0)]
    _, tags = extract_loras("<lora:a:0.5> <lora:a:0.5:0.1>")
    assert tags == [LoraTag("a", 1.0, pytest.approx(0.6))]


def test_other_tags_stay_for_parse_prompt():
    text, tags = extract_loras("a <hypernet:h:1> b <LORA:c:1>")
    assert text == "a <hypernet:h:1> b <LORA:c:1>" and tags == []  # the kind is case-sensitive, as in A1111


@pytest.mark.parametrize(
    ("tag", "part"),
    [
        ("<lora:a:heavy>", "heavy"),
        ("<lora:a:1:x>", "x"),
        ("<lora:a:1:1:8>", "8"),  # dyn (LyCORIS dynamic dim) is not supported
        ("<lora:a:dyn=8>", "dyn"),
        ("<lora: :1>", "no LoRA name"),
    ],
)
def test_bad_lora_tags_name_the_field(tag, part):
    with pytest.raises(RequestError) as err:
        extract_loras(f"x {tag}", field="prompt")
    assert err.value.field == "prompt" and err.value.value == tag and part in str(err.value)


def test_lora_tag_text():
    assert lora_tag("fubuki") == "<lora:fubuki:1>"
    assert lora_tag("sub/x", 0.75) == "<lora:sub/x:0.75>"
    assert format_weight(1.0) == "1" and format_weight(0.5) == "0.5"
    assert extract_loras(lora_tag("a b", 0.3))[1] == [LoraTag("a b", 0.3)]


# ---- warnings ----------------------------------------------------------------------------------------------------


def test_syntax_warnings():
    assert syntax_warnings("a (red:1.2) [fox], BREAK snow") == []
    assert "not applied" in syntax_warnings("a <lora:x:1>", "negative_prompt")[0]  # extract_loras should have run
    assert "hypernet" in syntax_warnings("a <hypernet:h:1>")[0]
    assert "prompt editing" in syntax_warnings("a [cat:dog:0.5]", "negative_prompt")[0]
    assert "negative_prompt" in syntax_warnings("a [cat:dog:0.5]", "negative_prompt")[0]
    assert "prompt editing" in syntax_warnings("a [dog:10]")[0]
    assert "alternation" in syntax_warnings("a [cat|dog]")[0]
    assert "AND" in syntax_warnings("a cat AND a dog")[0]
    assert syntax_warnings(r"a \[cat:dog:0.5\] and, sand") == []  # escaped brackets, lowercase "and"


# ---- chunking ----------------------------------------------------------------------------------------------------

COMMA = 0


def fake_tokenize(text: str) -> list[int]:
    """One token per word ("w12" -> 12), and "," -> COMMA."""
    return [COMMA if word == "," else int(word[1:]) for word in text.replace(",", " , ").split()]


def words(first: int, last: int) -> str:
    return " ".join(f"w{i}" for i in range(first, last + 1))


def chunks_of(text: str, **kw) -> list[Chunk]:
    return chunk_prompt(parse_prompt(text), fake_tokenize, COMMA, **kw)


def test_short_prompt_is_one_chunk():
    (chunk,) = chunks_of(words(1, 75))
    assert chunk.tokens == list(range(1, 76)) and chunk.weights == [1.0] * 75


def test_long_prompt_is_cut_every_75_tokens():
    chunks = chunks_of(words(1, 160))
    assert [c.tokens for c in chunks] == [list(range(1, 76)), list(range(76, 151)), list(range(151, 161))]


def test_empty_prompt_is_one_empty_chunk():
    assert [c.tokens for c in chunks_of("")] == [[]]


def test_comma_backtrack_moves_the_last_phrase():
    # 70 words, a comma, 10 words: the chunk fills at 75 with the comma 5 tokens from its end
    chunks = chunks_of(words(1, 70) + ", " + words(71, 80))
    assert chunks[0].tokens == [*range(1, 71), COMMA]
    assert chunks[1].tokens == list(range(71, 81))


def test_comma_backtrack_limit():
    # the comma is 25 tokens from the end of the full chunk: farther than 20, a hard cut at 75
    chunks = chunks_of(words(1, 50) + ", " + words(51, 90))
    assert len(chunks[0].tokens) == 75 and chunks[1].tokens == list(range(75, 91))
    # 20 exactly still moves
    chunks = chunks_of(words(1, 55) + ", " + words(56, 90))
    assert chunks[0].tokens == [*range(1, 56), COMMA] and chunks[1].tokens[0] == 56
    # comma_backtrack=0 turns it off
    chunks = chunks_of(words(1, 70) + ", " + words(71, 80), comma_backtrack=0)
    assert len(chunks[0].tokens) == 75


def test_weights_follow_their_tokens_across_chunks():
    chunks = chunks_of(words(1, 70) + ", (" + words(71, 80) + ":1.5)")
    assert chunks[0].weights == [1.0] * 71
    assert chunks[1].weights == [1.5] * 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("w1 w2 BREAK w3", [[1, 2], [3]]),
        ("BREAK w1", [[], [1]]),
        ("w1 BREAK", [[1]]),
        ("w1 BREAK BREAK w2", [[1], [], [2]]),
        (words(1, 75) + " BREAK w76", [list(range(1, 76)), [76]]),  # a full chunk is not closed twice
    ],
)
def test_break_chunks(text, expected):
    assert [c.tokens for c in chunks_of(text)] == expected


def test_fragments_are_tokenized_separately():
    seen = []

    def tokenize(text):
        seen.append(text)
        return fake_tokenize(text)

    chunk_prompt([Fragment("w1 ", 1.0), Fragment("w2", 1.1), BREAK, Fragment("w3", 1.0)], tokenize, COMMA)
    assert seen == ["w1 ", "w2", "w3"]
