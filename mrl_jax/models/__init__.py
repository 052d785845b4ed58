"""Backbones and the MRL classifier that puts a head on them.

Contract for a backbone module in this package (resnet.py, vit.py, cnn.py, ...):
  * it defines `VARIANTS: dict[str, Callable[..., flax.linen.Module]]` mapping
    public model names (e.g. "resnet50", "vit_b16") to constructors that take
    keyword overrides such as `dtype=jnp.bfloat16`;
  * the module's `__call__(images, train)` maps images [B, H, W, C] (float) to
    the representation z [B, d] that the MRL head reads;
  * it exposes `embedding_dim` (the d above) without needing `init`.
Adding a backbone means adding a file: `registry.py` discovers the modules.
"""
