"""The two-tower model: raw projected embeddings of both towers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrl_jax.models import projected_tower
from mrl_jax.models import registry
from mrl_jax.models import two_tower


def _model(d=24):
  return two_tower.TwoTower(
      registry.build_backbone("small_cnn", embed_dim=16, widths=(4, 8)),
      registry.build_text_encoder("bert_mu", vocab_size=64, pool="mean"), d)


def test_towers_give_raw_embeddings_of_the_shared_width():
  model = _model()
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 28, 28, 1)),
                       jnp.float32)
  ids = jnp.array([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0], [2, 8, 8, 8, 3]])
  variables = model.init(jax.random.key(0), images, ids, ids > 0, train=False)
  assert set(variables["params"]) == {"image_tower", "text_tower",
                                      "image_projection", "text_projection"}
  z_img, z_txt = model.apply(variables, images, ids, ids > 0, train=False)
  assert z_img.shape == z_txt.shape == (3, 24)
  # Not normalised inside the towers: the loss normalises each prefix.
  assert not np.allclose(np.linalg.norm(z_txt, axis=-1), 1.0)
  alone = model.apply(variables, ids, ids > 0, train=False,
                      method=model.encode_text)
  np.testing.assert_allclose(alone, z_txt, rtol=1e-6)
  # Padding does not change a text's embedding (mean pooling is masked).
  padded = jnp.pad(ids, ((0, 0), (0, 3)))
  np.testing.assert_allclose(
      model.apply(variables, padded, padded > 0, train=False,
                  method=model.encode_text), z_txt, rtol=1e-5, atol=1e-6)


def test_a_width_below_one_is_refused():
  with pytest.raises(ValueError, match="embed_dim=0"):
    _model(0).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                   jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4)),
                   train=False)


@pytest.mark.parametrize("locked", ["image", "text"])
def test_a_locked_tower_gets_no_gradient_and_keeps_its_statistics(locked):
  model = _model().clone(locked=locked)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(4, 28, 28, 1)), jnp.float32)
  ids = jnp.asarray(rng.integers(4, 64, (4, 6)))
  variables = model.init(jax.random.key(0), images, ids, ids > 0, train=False)

  def loss(params):
    (z_img, z_txt), updates = model.apply(
        {**variables, "params": params}, images, ids, ids > 0, train=True,
        mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    return (z_img * z_txt).sum(), updates["batch_stats"]

  grads, stats = jax.grad(loss, has_aux=True)(variables["params"])
  other = {"image": "text", "text": "image"}[locked]
  assert not any(np.any(g) for g in jax.tree.leaves(
      grads[f"{locked}_tower"]))
  assert all(np.any(g) for g in jax.tree.leaves(grads[f"{locked}_projection"]))
  assert any(np.any(g) for g in jax.tree.leaves(grads[f"{other}_tower"]))
  # Inference mode: a locked image tower's BatchNorm statistics stay put.
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                       stats["image_tower"],
                       variables["batch_stats"]["image_tower"])
  assert not any(jax.tree.leaves(moved)) if locked == "image" else all(
      jax.tree.leaves(moved))


def test_each_tower_alone_gives_the_two_tower_embeddings():
  # What an encoder bundle loads per tower: ProjectedTower with
  # tower_variables, equal to the trained model's encode_image / encode_text.
  towers = _model()
  model = two_tower.ContrastiveTwoTower(towers, nesting_dims=(8, 24))
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 28, 28, 1)),
                       jnp.float32)
  ids = jnp.array([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0], [2, 8, 8, 8, 3]])
  variables = model.init(jax.random.key(0), images, ids, ids > 0, train=False)
  inputs = {"image": (images,), "text": (ids, None, ids > 0)}
  for side, tower in (("image", towers.image_tower),
                      ("text", towers.text_tower)):
    alone = projected_tower.ProjectedTower(tower, 24)
    side_variables = two_tower.tower_variables(variables, side)
    assert set(side_variables["params"]) == {"tower", "projection"}
    # The CNN's batch statistics come along; BERT has none.
    assert ("batch_stats" in side_variables) == (side == "image")
    want = model.apply(variables, *[x for x in inputs[side] if x is not None],
                       train=False, method=f"encode_{side}")
    np.testing.assert_array_equal(
        alone.apply(side_variables, *inputs[side], train=False), want)
