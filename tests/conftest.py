"""Test-wide settings: 8 emulated CPU devices, float32, strict rank promotion."""

import os
import pathlib

# Must happen before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_platforms", "cpu")

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
TESTDATA = SHARED / "testdata"
T5X_TINY = TESTDATA / "t5x_t5_1_1_tiny" / "checkpoint_3"
T5_SPM = TESTDATA / "t5_vocab" / "spiece.model"


@pytest.fixture(scope="session")
def t5x_tiny_dir() -> pathlib.Path:
  if not T5X_TINY.exists():
    pytest.fail(f"Shared fixture missing: {T5X_TINY} (expected ../shared beside the repo).")
  return T5X_TINY


def pytest_collection_modifyitems(config, items):
  """Files holding `slow` tests first, the last-collected first (the multi-process file).

  `make test` hands whole files to 2 workers in this order (`--dist loadfile
  --no-loadscope-reorder`), so the long end-to-end files start early instead of one of
  them running alone at the end. Test order within a file is unchanged.
  """
  del config
  slow = [str(item.fspath) for item in items if item.get_closest_marker("slow")]
  rank = {path: r for r, path in enumerate(dict.fromkeys(reversed(slow)))}
  items.sort(key=lambda item: rank.get(str(item.fspath), len(rank)))
