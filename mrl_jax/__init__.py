"""mrl_jax: Matryoshka Representation Learning (Kusupati et al., 2022) in JAX.

The module map is the "Layout" section of the top-level README.md; the design
of each subsystem is in docs/design.md. `mrl_jax.load_encoder(path)` loads an
exported encoder without importing the training code.
"""


def __getattr__(name: str):
  # `mrl_jax.load_encoder` without importing jax at `import mrl_jax`.
  if name == "load_encoder":
    from mrl_jax.export.encoder import load_encoder  # pylint: disable=import-outside-toplevel
    return load_encoder
  raise AttributeError(f"module 'mrl_jax' has no attribute {name!r}")
