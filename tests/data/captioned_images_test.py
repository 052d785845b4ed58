"""The image-text builders' shared parts: splitting and `caption_tokens`."""
import numpy as np
import pytest

from mrl_jax.data import captioned_images
from mrl_jax.data import preprocess
from mrl_jax.data import tokenizer as tok

CLS, SEP, PAD = tok.CLS_ID, tok.SEP_ID, tok.PAD_ID


def _pair(key: str, split_key: str, split=None) -> captioned_images.Pair:
  return captioned_images.Pair(key, key, np.zeros((2, 2, 3), np.uint8),
                               "text", -1, split_key, split)


def test_split_pairs_keeps_keys_together_and_honours_given_splits():
  pairs = [_pair(f"{k}-{i}", f"title {k}") for k in range(1000)
           for i in range(2)]
  pairs.append(_pair("given", "title 0", split="test"))
  splits = captioned_images.split_pairs(pairs, 0.1, 0.2)
  seen = {}
  for name, members in splits.items():
    for pair in members:
      if pair.key != "given":
        assert seen.setdefault(pair.split_key, name) == name
  sizes = {name: len(members) for name, members in splits.items()}
  # 100 and 200 of the 1000 keys expected (5 standard deviations either way).
  assert 110 <= sizes["validation"] <= 290 and 280 <= sizes["test"] <= 520
  assert splits["test"][-1].key == "given"


def _tokens(spec: str, ids: list[int]) -> tuple[list[int], list[int]]:
  out = preprocess.build(spec)({"input_ids": np.asarray(ids, np.int32)},
                               [0, 0])
  return out["input_ids"].numpy().tolist(), out["input_mask"].numpy().tolist()


@pytest.mark.parametrize("spec,ids,want", [
    ("caption_tokens", [CLS, 7, 8, SEP, PAD, PAD], [CLS, 7, 8, SEP, PAD, PAD]),
    # Cut: [SEP] goes back into the last slot.
    ("caption_tokens(4)", [CLS, 7, 8, 9, 10, SEP], [CLS, 7, 8, SEP]),
    # Fits exactly or is shorter: unchanged, cut padding only.
    ("caption_tokens(4)", [CLS, 7, 8, SEP, PAD, PAD], [CLS, 7, 8, SEP]),
    ("caption_tokens(4)", [CLS, 7, SEP, PAD, PAD, PAD], [CLS, 7, SEP, PAD]),
    ("caption_tokens(8)", [CLS, 7, SEP, PAD], [CLS, 7, SEP] + [PAD] * 5),
])
def test_caption_tokens(spec, ids, want):
  got, mask = _tokens(spec, ids)
  assert got == want
  assert mask == [int(i != PAD) for i in want]


def test_caption_tokens_refuses_no_room():
  with pytest.raises(ValueError, match="no room for"):
    preprocess.build("caption_tokens(1)")
