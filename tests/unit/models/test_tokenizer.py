"""studio.models.tokenizer: the CLIP tokenizer built offline gives the real CLIP ids."""

from __future__ import annotations

from studio import models


def test_clip_tokenizer_matches_real_clip_ids():
    tokenizer = models.clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    padded = tokenizer("a cat", padding="max_length", max_length=6).input_ids
    assert padded == [49406, 320, 2368, 49407, 49407, 49407]


def test_clip_tokenizer_open_clip_pad_token():
    tokenizer = models.clip_tokenizer(pad_token="!")
    assert tokenizer.pad_token == "!" and tokenizer.pad_token_id == 0
    assert tokenizer("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]
