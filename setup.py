"""prompt_jax: soft prompt tuning of frozen T5 / mT5 models in JAX / Flax."""

import pathlib

import setuptools

_ROOT = pathlib.Path(__file__).parent

# Shipped gin files live inside the package (prompt_jax/gin is a link-free copy target):
# they are found by the CLI after `pip install .` from any directory.
_GIN_FILES = [
    str(p.relative_to(_ROOT / "prompt_jax"))
    for p in (_ROOT / "prompt_jax" / "gin").rglob("*.gin")
]

setuptools.setup(
    name="prompt_jax",
    version="0.1.0",
    description="Soft prompt tuning of frozen T5 / mT5 models in JAX / Flax.",
    long_description=(_ROOT / "README.md").read_text() if (_ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["prompt_jax", "prompt_jax.*"]),
    package_data={"prompt_jax": _GIN_FILES},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.4",
        "numpy",
        "seqio>=0.0.19",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # TFDS 4.9.10 fails on first load without it.
        "gin-config>=0.5",
        "sentencepiece",
        "orbax-checkpoint>=0.10",
        "tensorstore>=0.1.60",
        "msgpack",
        "safetensors",  # HF checkpoints (load_pretrained); sliced reads for sharded loads.
        "ml_dtypes",  # bfloat16 for numpy (checkpoint arrays); already a jax dependency.
        "etils[epath]",  # model dirs anywhere (local, gs://, file://): train/paths.py
        "tqdm",
        "scipy",
        "scikit-learn",
        "tensorboardX",
        "matplotlib",
        "psutil",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",  # `make test` runs the suite on two workers (one test file each).
            # Exact pin: the CPU wheel on these machines; a looser spec pulls a CUDA build.
            "torch==2.13.0",
            "transformers",
            "safetensors",
            "peft",
        ],
        "bench": ["torch==2.13.0", "transformers", "peft", "safetensors"],
        # tests/data/test_t5_reference.py compares formats and metrics with the `t5`
        # package. t5 itself must go in with --no-deps (its own requirements pull
        # mesh-tensorflow, transformers and nightly seqio / tfds), so this extra lists only
        # what its `t5.data` / `t5.evaluation` modules import on top of ours:
        #   pip install -e '.[t5ref]' && pip install --no-deps t5==0.9.4
        "t5ref": ["babel", "editdistance", "rouge-score", "sacrebleu"],
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
    },
    entry_points={"console_scripts": ["prompt-jax=prompt_jax.cli:main"]},
)
