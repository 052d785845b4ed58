"""BERT: published parameter counts, padding, pooling, dtype/remat, registry,
and golden PartitionSpecs of BERT-Base with the nested MLM head.

Regenerate the golden files after an intended change and review the diff:

  MRL_JAX_REGENERATE_GOLDEN=1 python -m pytest tests/models/bert_test.py
"""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mrl_jax import sharding
from mrl_jax import sharding_rules
from mrl_jax.models import bert
from mrl_jax.models import registry
from mrl_jax.mrl import mlm

GOLDEN = pathlib.Path(__file__).parents[1] / "golden" / "sharding"
REGENERATE = os.environ.get("MRL_JAX_REGENERATE_GOLDEN") == "1"
MESHES = {
    "dp": (("data", -1),),
    "fsdp": (("data", 1), ("fsdp", -1)),
    "fsdp_tp": (("data", 1), ("fsdp", 4), ("model", 2)),
}


def _ids(batch: int = 2, length: int = 16) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((batch, length), jnp.int32)


def _abstract_params(model, length: int = 16):
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), _ids(2, length))
  assert set(variables) == {"params"}
  return variables["params"]


def _num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _bert_count(vocab: int, hidden: int, depth: int, positions: int = 512,
                pooler: bool = True) -> int:
  """Parameter count of published BERT.

  Embeddings (vocab + positions + 2 segments) * h + LayerNorm 2h; per layer
  12 h^2 + 13 h (qkv 3h^2+3h, out h^2+h, fc1 4h^2+4h, fc2 4h^2+h, two
  LayerNorms 4h); pooler h^2 + h.
  """
  embeddings = (vocab + positions + 2) * hidden + 2 * hidden
  return (embeddings + depth * (12 * hidden**2 + 13 * hidden)
          + (hidden**2 + hidden if pooler else 0))


def test_bert_base_has_the_published_parameter_count():
  # BERT-Base, 30,522 WordPiece vocab and 512 positions: embeddings
  # 23,837,184 (incl. LayerNorm) + 12 x 7,087,872 + pooler 590,592.
  assert _bert_count(30522, 768, 12, pooler=False) == 108_891_648
  assert _bert_count(30522, 768, 12) == 109_482_240
  assert 23_837_184 + 12 * 7_087_872 + 590_592 == 109_482_240
  with_pooler = _abstract_params(
      registry.build_text_encoder("bert_base", pool="pooler"))
  assert _num_params(with_pooler) == 109_482_240
  assert _num_params(with_pooler["pooler"]) == 590_592
  assert _num_params(_abstract_params(
      registry.build_text_encoder("bert_base"))) == 108_891_648


@pytest.mark.parametrize("name,hidden,depth,heads", [
    ("bert_tiny", 128, 2, 2), ("bert_mini", 256, 4, 4),
    ("bert_small", 512, 4, 8), ("bert_medium", 512, 8, 8),
    ("bert_base", 768, 12, 12), ("bert_large", 1024, 24, 16)])
def test_variants_match_the_published_sizes(name, hidden, depth, heads):
  model = registry.build_text_encoder(name)
  assert (model.hidden, model.depth, model.num_heads, model.mlp_dim) == (
      hidden, depth, heads, 4 * hidden)
  assert model.embedding_dim == hidden and model.vocab_size == 30522
  assert _num_params(_abstract_params(model)) == _bert_count(
      30522, hidden, depth, pooler=False)
  if name == "bert_large":  # "335M" with the pooler
    assert _bert_count(30522, hidden, depth) == 335_141_888


def test_text_encoders_are_not_image_backbones():
  assert "bert_base" in registry.available_text_encoders()
  assert not any(n.startswith("bert") for n in registry.available_models())
  with pytest.raises(ValueError, match="unknown model 'bert_base'"):
    registry.build_backbone("bert_base")
  with pytest.raises(ValueError, match="unknown text model 'vit_b16'.*bert_"):
    registry.build_text_encoder("vit_b16")


def _mu(**kw):
  return registry.build_text_encoder("bert_mu", vocab_size=50, **kw)


def _batch(seed: int = 0, batch: int = 3, length: int = 10):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 50, (batch, length)).astype(np.int32)
  lengths = np.array([length, 6, 3])[:batch]
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return jnp.asarray(ids * mask), jnp.zeros_like(ids), jnp.asarray(mask)


def test_padding_changes_nothing_but_padding():
  model = _mu(pool="mean")
  ids, seg, mask = _batch()
  params = model.init(jax.random.key(0), ids, train=False)
  out = model.apply(params, ids, seg, mask, train=False)
  # Other ids at padded positions: real tokens and embeddings are unchanged.
  noisy = jnp.where(mask > 0, ids, 7)
  out2 = model.apply(params, noisy, seg, mask, train=False)
  real = mask[..., None] > 0
  np.testing.assert_allclose(jnp.where(real, out.sequence, 0),
                             jnp.where(real, out2.sequence, 0), atol=1e-5)
  np.testing.assert_allclose(out.embedding, out2.embedding, atol=1e-5)
  # Row 2 with only its 3 real tokens, unpadded, gives the same mean.
  short = model.apply(params, ids[2:, :3], seg[2:, :3], mask[2:, :3],
                      train=False)
  np.testing.assert_allclose(short.embedding[0], out.embedding[2], atol=1e-5)
  assert out.sequence.shape == (3, 10, 32)
  assert out.word_embeddings.shape == (50, 32)


def test_mean_pool_ignores_padding_and_empty_rows():
  seq = jnp.arange(12, dtype=jnp.float32).reshape(2, 3, 2)
  got = bert.mean_pool(seq, jnp.array([[1, 1, 0], [0, 0, 0]]))
  np.testing.assert_allclose(got, [[1.0, 2.0], [0.0, 0.0]])


def test_pools_cls_mean_pooler():
  ids, seg, mask = _batch()
  params = _mu(pool="pooler").init(jax.random.key(0), ids, train=False)
  cls = _mu(pool="cls").apply(
      {"params": {k: v for k, v in params["params"].items() if k != "pooler"}},
      ids, seg, mask, train=False)
  np.testing.assert_allclose(cls.embedding, cls.sequence[:, 0])
  pooled = _mu(pool="pooler").apply(params, ids, seg, mask, train=False)
  pooler = params["params"]["pooler"]
  np.testing.assert_allclose(
      pooled.embedding,
      jnp.tanh(cls.sequence[:, 0] @ pooler["kernel"] + pooler["bias"]),
      atol=1e-5)


@pytest.mark.slow  # compile-heavy
def test_bfloat16_and_remat_keep_the_function():
  ids, seg, mask = _batch()
  params = _mu().init(jax.random.key(0), ids, train=False)
  ref = _mu().apply(params, ids, seg, mask, train=False).embedding
  remat = _mu(remat="full").apply(params, ids, seg, mask, train=False)
  np.testing.assert_allclose(remat.embedding, ref, atol=1e-5)
  low = _mu(dtype=jnp.bfloat16).apply(params, ids, seg, mask, train=False)
  assert low.sequence.dtype == jnp.bfloat16
  assert low.word_embeddings.dtype == jnp.float32
  np.testing.assert_allclose(low.embedding.astype(jnp.float32), ref,
                             atol=0.1)
  # Gradients flow through the remat blocks with dropout on.
  grad = jax.grad(lambda p: _mu(remat="full").apply(
      p, ids, seg, mask, train=True,
      rngs={"dropout": jax.random.key(1)}).embedding.sum())(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grad))


@pytest.mark.parametrize("kwargs,length,match", [
    ({}, 129, "sequence length 129 exceeds the position table \\(128\\)"),
    ({"pool": "max"}, 8, "pool must be one of"),
    ({"remat": "some"}, 8, "unknown remat 'some'"),
])
def test_bad_settings_raise_one_line(kwargs, length, match):
  with pytest.raises(ValueError, match=match):
    _abstract_params(_mu(**kwargs), length)


def _mlm_abstract_params():
  model = mlm.NestedMlmModel(
      registry.build_text_encoder("bert_base"),
      nesting_dims=(12, 24, 48, 96, 192, 384, 768))
  ids = _ids(2, 128)
  pos = jax.ShapeDtypeStruct((2, 20), jnp.int32)
  return jax.eval_shape(
      lambda *args: model.init(jax.random.key(0), *args, train=False),
      ids, ids, ids, pos)["params"]


def _tables(strategy: str) -> dict:
  params = _mlm_abstract_params()
  mesh = sharding.make_train_mesh(MESHES[strategy])
  rules = sharding_rules.resolve_rules(strategy)
  specs, notes = sharding_rules.param_specs(params, rules, mesh)
  opt_state = jax.eval_shape(optax.adamw(1e-4).init, params)
  opt_specs = sharding_rules.opt_state_specs(opt_state, params, specs)
  return {"mesh": dict(mesh.shape),
          "params": sharding_rules.spec_table(specs),
          "opt_state": sharding_rules.spec_table(opt_specs), "notes": notes}


@pytest.mark.parametrize("strategy", MESHES)
def test_golden_partition_specs_bert_base_mlm(strategy):
  got = _tables(strategy)
  path = GOLDEN / f"bert_base_mlm.{strategy}.json"
  if REGENERATE:
    path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
  want = json.loads(path.read_text())
  changed = sorted(k for k in set(want["params"]) | set(got["params"])
                   if want["params"].get(k) != got["params"].get(k))
  assert not changed, f"param specs differ from {path.name} for {changed[:5]}"
  assert got == want


def test_vocabulary_splits_over_model_and_blocks_are_tensor_parallel():
  got = _tables("fsdp_tp")["params"]
  assert got["encoder/word_embeddings/embedding"] == ["model", "fsdp"]
  assert got["mlm/decoder_bias"] == ["model"]
  block = "encoder/block_5"
  assert got[f"{block}/attn/query/kernel"] == ["fsdp", "model"]
  assert got[f"{block}/attn/out/kernel"] == ["model", None, "fsdp"]
  assert got[f"{block}/mlp/fc1/kernel"] == ["fsdp", "model"]
  assert got[f"{block}/mlp/fc2/kernel"] == ["model", "fsdp"]
  fsdp = _tables("fsdp")["params"]
  # 30,522 is not divisible by 8: the vocab stays whole, the width splits.
  assert fsdp["encoder/word_embeddings/embedding"] == [None, "fsdp"]
  assert all(spec == [] for spec in _tables("dp")["params"].values())
