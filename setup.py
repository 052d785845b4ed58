"""mrl_jax: Matryoshka Representation Learning in JAX/Flax.

setup.py is the single source of truth for dependencies. The pins are the set
tested together on Python 3.11 (see BUILD_NOTES.md, "Pinned versions").
"""
import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    # flax.metrics.tensorboard (and tf.summary) need it; tensorflow-cpu
    # does not pull it in.
    "tensorboard==2.21.0",
    # tfds forgets these two on Python 3.11 (tensorflow/datasets#11212; the
    # NumPy decode path needs PIL).
    "importlib_resources>=6,<8",
    "pillow>=10,<14",
    "numpy>=2.0,<2.5",
    # Subword tokenizer of the text models: one small wheel, no dependencies,
    # the whole tokenizer in one .model file.
    "sentencepiece==0.2.3",
    # Reads a standard BERT vocab.txt (WordPiece with BERT's basic
    # tokenizer): the reference implementation, not a re-written one.
    "tokenizers==0.23.3",
]

# Importing official PyTorch checkpoints (mrl_jax.tools.import_torch). The
# CPU build is enough: on the project's machines pip takes the local wheel
# torch-2.13.0+cpu (~30 s); elsewhere add
# --extra-index-url https://download.pytorch.org/whl/cpu to skip CUDA.
TORCH = ["torch==2.13.0"]
# Plots of the evaluation (experiments/fashion_mnist/report.py); the
# notebooks run headless in tests (nbclient) and plot too.
PLOTS = ["matplotlib==3.11.2"]
NOTEBOOKS = ["nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0",
             *PLOTS]
# FAISS: the ANN shortlists of mrl_jax.search.ann (HNSW / IVF on a prefix)
# and the baselines of experiments/bench/.
ANN = ["faiss-cpu==1.15.1"]
BENCH = [*ANN, *PLOTS]  # the retrieval benchmark plots its Pareto front

# --mode=aot: compiles the train step for TPU topologies on a CPU-only
# machine; 0.0.42.* is the libtpu built for jax 0.10.2. In the test extra too,
# so CI compiles a tiny model for a small topology (BUILD_NOTES.md).
LIBTPU = "libtpu==0.0.42.*"

EXTRAS_REQUIRE = {
    # Accelerator builds of the pinned jax (the base pins are the CPU build):
    # `pip install -e '.[tpu]'` on TPU VMs, '.[cuda12]' on NVIDIA GPUs
    # (CUDA 12 wheels also run on newer drivers), '.[cuda13]' for CUDA 13.
    "tpu": ["jax[tpu]==0.10.2"],
    "cuda12": ["jax[cuda12]==0.10.2"],
    "cuda13": ["jax[cuda13]==0.10.2"],
    "aot": [LIBTPU],
    "torch": TORCH,
    "notebooks": NOTEBOOKS,
    "plots": PLOTS,
    "ann": ANN,
    "bench": BENCH,
    # CI runs the AOT, import-parity, notebook, plot and benchmark tests.
    # pytest-xdist: scripts/test.sh runs one worker per core (up to 4).
    "test": ["pytest>=8,<10", "pytest-xdist==3.8.0", LIBTPU, *TORCH,
             *NOTEBOOKS, *BENCH],
}

setuptools.setup(
    name="mrl_jax",
    version="0.1.0",
    description="Matryoshka Representation Learning (MRL) in JAX/Flax.",
    # 3.11 is the tested set; 3.12 (Colab's Python) installs these pins and
    # runs the smoke config (BUILD_NOTES.md, "Python 3.12").
    python_requires=">=3.11,<3.13",
    packages=setuptools.find_packages(include=["mrl_jax", "mrl_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
