"""The PANDA gym driver's statistics and report (the study itself is in the README)."""

import numpy as np
import pytest

from prompt_jax.studies import panda_gym


def _ranks(x):
  order = np.argsort(x, kind="stable")
  r = np.empty(len(x))
  r[order] = np.arange(len(x))
  return r


def test_spearman_is_the_pearson_correlation_of_ranks():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=12), rng.normal(size=12)
  want = np.corrcoef(_ranks(x), _ranks(y))[0, 1]
  assert panda_gym.spearman(list(x), list(y)) == pytest.approx(want)
  assert panda_gym.spearman([1, 2, 3], [10, 20, 25]) == pytest.approx(1.0)
  assert panda_gym.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  assert np.isnan(panda_gym.spearman([1, 2, 3], [5, 5, 5]))  # A constant gain.


def test_tables_and_scatter_from_the_pairs(tmp_path):
  pairs = [{"source": s, "target": t, "pt": 10.0, "pot": pot, "kd": kd, "gain": pot - 10.0,
            "panda": m, "e_avg": 0.5, "on": 0.4 + m / 10, "lambda": m}
           for s, t, pot, kd, m in [("a", "x", 30.0, 12.0, 0.9), ("b", "x", 5.0, 11.0, 0.2),
                                    ("a", "y", 20.0, 15.0, 0.7)]]
  rho = {"panda": panda_gym.spearman([p["panda"] for p in pairs], [p["gain"] for p in pairs]),
         "e_avg": float("nan"), "on": 1.0}
  text = panda_gym.format_tables({"pairs": pairs, "spearman": rho})
  assert "| PANDA-style s(S,T) | 1.000 |" in text
  assert "| x | 10.0 | 17.5 | 11.5 | 30.0 | 12.0 |" in text  # Target x: mean over sources.
  assert "| average | 10.0 | 18.3 | 12.7 | 30.0 | 15.0 |" in text
  assert "| b -> x | 10.0 | 5.0 | 11.0 | -5.0 |" in text
  panda_gym.plot(tmp_path / "s.png", pairs, rho)
  assert (tmp_path / "s.png").stat().st_size > 1000
