"""The small CNN of the Fashion-MNIST default: shapes and parameter count."""
import jax
import jax.numpy as jnp
import numpy as np

from mrl_jax.models import registry


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_small_cnn_shapes_and_param_count():
  model = registry.build_backbone("small_cnn")
  assert model.embedding_dim == 128
  x = jnp.zeros((2, 28, 28, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x,
                                                train=False))
  # convs: 3*3*(1*16 + 16*32 + 32*32 + 32*64 + 64*64) = 69,264 (no bias);
  # BN scale+bias: 2*(16+32+32+64+64+128) = 672; projection 7*7*64*128.
  assert _count(variables["params"]) == 69_264 + 672 + 7 * 7 * 64 * 128
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (2, 128)


def test_cnn_mu_forward_train_and_eval():
  model = registry.build_backbone("cnn_mu")
  x = jnp.linspace(-1, 1, 2 * 28 * 28).reshape(2, 28, 28, 1)
  variables = model.init(jax.random.key(0, impl="rbg"), x, train=False)
  z, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert z.shape == (2, 16) and bool(jnp.isfinite(z).all())
  assert (z >= 0).all()  # post-ReLU features, like a ResNet's pooled output
  changed = jax.tree.map(lambda a, b: bool((a != b).any()),
                         updates["batch_stats"], variables["batch_stats"])
  assert any(jax.tree.leaves(changed))
  assert model.apply(variables, x, train=False).shape == (2, 16)
