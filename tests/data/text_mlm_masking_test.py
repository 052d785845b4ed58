"""MLM masking: BERT's rates, determinism per (seed, index), specials kept."""
import numpy as np
import pytest
import tensorflow as tf

from mrl_jax.data import mlm_masking
from mrl_jax.data import tokenizer as tok

VOCAB, P = 1000, 20


def _sequences(n: int, length: int = 128, seed: int = 0) -> np.ndarray:
  """Packed-looking rows: [CLS] ids (with inner [SEP]s and [UNK]s) [SEP],
  some rows padded."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(tok.NUM_SPECIAL, VOCAB, (n, length)).astype(np.int32)
  ids[:, 0] = tok.CLS_ID
  ids[rng.random((n, length)) < 0.03] = tok.SEP_ID
  ids[rng.random((n, length)) < 0.02] = tok.UNK_ID
  ends = np.where(rng.random(n) < 0.3, rng.integers(10, length, n), length)
  for row, end in enumerate(ends):
    ids[row, end - 1] = tok.SEP_ID
    ids[row, end:] = tok.PAD_ID
  return ids


def _masked(ids: np.ndarray, seed: int = 7) -> dict[str, np.ndarray]:
  ds = mlm_masking.mask_dataset(
      tf.data.Dataset.from_tensor_slices({"input_ids": ids}), seed, VOCAB, P)
  return next(ds.batch(len(ids)).as_numpy_iterator())


@pytest.fixture(scope="module")
def sample():
  ids = _sequences(2000)
  return ids, _masked(ids)


def test_output_shapes_and_types(sample):
  ids, out = sample
  assert out["input_ids"].shape == ids.shape
  for key in ("masked_positions", "masked_ids", "masked_weights"):
    assert out[key].shape == (len(ids), P)
  assert out["masked_weights"].dtype == np.float32
  np.testing.assert_array_equal(out["input_mask"], ids != tok.PAD_ID)
  np.testing.assert_array_equal(out["segment_ids"], 0)


def test_fifteen_percent_of_candidates_and_80_10_10(sample):
  ids, out = sample
  candidates = (ids >= tok.NUM_SPECIAL).sum(1)
  count = out["masked_weights"].sum(1)
  np.testing.assert_array_equal(
      count, np.minimum(P, np.maximum(1, np.round(0.15 * candidates))))
  real = out["masked_weights"] > 0
  rows = np.nonzero(real)[0]
  pos = out["masked_positions"][real]
  now, before = out["input_ids"][rows, pos], ids[rows, pos]
  np.testing.assert_array_equal(out["masked_ids"][real], before)
  is_mask = now == tok.MASK_ID
  same = now == before
  # A random replacement equals the original with probability ~1/VOCAB.
  assert abs(is_mask.mean() - 0.8) < 0.01
  assert abs(same.mean() - 0.1) < 0.01
  assert abs((~is_mask & ~same).mean() - 0.1) < 0.01
  replaced = now[~is_mask & ~same]
  assert replaced.min() >= tok.NUM_SPECIAL and replaced.max() < VOCAB
  # Chosen positions are spread like the candidates (full rows).
  full = (ids != tok.PAD_ID).all(1)
  chosen = pos[full[rows]]
  spread = np.nonzero(ids[full] >= tok.NUM_SPECIAL)[1]
  assert abs(chosen.mean() / spread.mean() - 1) < 0.02


def test_special_tokens_are_never_chosen_or_changed(sample):
  ids, out = sample
  real = out["masked_weights"] > 0
  rows = np.nonzero(real)[0]
  assert (ids[rows, out["masked_positions"][real]] >= tok.NUM_SPECIAL).all()
  special = ids < tok.NUM_SPECIAL
  np.testing.assert_array_equal(out["input_ids"][special], ids[special])
  # Unchosen ordinary tokens are untouched too.
  chosen = np.zeros(ids.shape, bool)
  chosen[rows, out["masked_positions"][real]] = True
  np.testing.assert_array_equal(out["input_ids"][~chosen], ids[~chosen])
  # Positions ascend, without repeats; padding slots are 0 with id 0.
  for row in range(len(ids)):
    n = int(out["masked_weights"][row].sum())
    assert (np.diff(out["masked_positions"][row, :n]) > 0).all()
    assert (out["masked_positions"][row, n:] == 0).all()
    assert (out["masked_ids"][row, n:] == 0).all()


def test_deterministic_per_seed_and_example_index(sample):
  ids, out = sample
  again = _masked(ids)
  for key in out:
    np.testing.assert_array_equal(out[key], again[key])
  other = _masked(ids, seed=8)
  assert not np.array_equal(other["masked_positions"], out["masked_positions"])
  # Example i depends on (seed, i) only: resuming at example 100 (skip before
  # masking, as the pipeline does) gives the same rows.
  ds = tf.data.Dataset.from_tensor_slices({"input_ids": ids[:150]})
  preprocess = mlm_masking.make_preprocess(VOCAB, P)
  resumed = ds.enumerate().skip(100).map(
      lambda i, ex: preprocess(ex, tf.stack([tf.constant(7, tf.int64), i])))
  tail = next(resumed.batch(50).as_numpy_iterator())
  for key in out:
    np.testing.assert_array_equal(tail[key], out[key][100:150])


def test_short_and_empty_sequences():
  ids = np.array([[tok.CLS_ID, 9, tok.SEP_ID, 0],
                  [tok.CLS_ID, tok.SEP_ID, 0, 0]], np.int32)
  out = _masked(ids)
  assert out["masked_positions"].shape == (2, P)
  assert out["masked_weights"][0].tolist() == [1.0] + [0.0] * (P - 1)
  assert out["masked_positions"][0, 0] == 1 and out["masked_ids"][0, 0] == 9
  assert out["masked_weights"][1].sum() == 0  # nothing to predict


@pytest.mark.parametrize("kwargs,match", [
    ({"rate": 0.0}, "mask rate 0.0 must be in"),
    ({"max_predictions": 0}, "max_predictions=0 must be positive"),
])
def test_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mlm_masking.make_preprocess(VOCAB, **{"max_predictions": P, **kwargs})
