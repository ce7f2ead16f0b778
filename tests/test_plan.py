"""`prompt-jax plan`: the tiny config's train step compiled for 8 emulated devices."""

import importlib.util
import json

import pytest

from prompt_jax import plan

TINY_RUN = ["--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin",
            "--gin_file=runs/prompt_finetune.gin", "--gin_file=methods/prompt_tuning.gin",
            "--gin_file=prompts/sampled_vocab.gin", "--gin.BATCH_SIZE=8",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
            "--gin.PROMPT_LENGTH=5", "--gin.NUM_PARTITIONS=2"]


HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def test_plan_tiny_on_8_emulated_devices(capsys):
  assert plan.main([*TINY_RUN, "--devices=8", "--device_memory=1GiB"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  result = json.loads(out[-1])
  assert result["devices"] == 8 and result["mesh"] == {"data": 4, "model": 2}
  assert 0 < result["per_device_peak_bytes"] <= result["device_memory_bytes"] == 2**30
  assert result["fits"] is True
  # The frozen tiny model (vocab 32128 x d 4, split on model) is the bulk of the arguments:
  # one device holds about half of its embedding and logits tables, not all of them.
  whole_tables = 2 * 32128 * 4 * 4
  assert whole_tables / 2 <= result["argument_bytes"] < whole_tables
  # The prompt's gradient is all-reduced over the mesh.
  assert result["collectives"]["all-reduce"]["count"] >= 1
  assert any(line.startswith("peak / device") for line in out)


def test_plan_reports_not_fitting(capsys):
  assert plan.main([*TINY_RUN, "--devices=8", "--device_memory=1000"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fits"] is False


@pytest.mark.parametrize("flags, message", [
    (["--device_memory=lots"], "give bytes"),
    pytest.param(["--topology=v4-64"], "no TPU topology v4:2x2x4",
                 marks=pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed")),
    (["--topology=v3-33"], "unknown TPU slice; known: v2-{8,32,128,256,512}, v3-{8,"),
    (["--topology=tpu"], "or libtpu's own vX:AxB[xC]"),
    (["--devices=3"], "do not fit 3 devices"),
])
def test_plan_errors_are_one_line(capsys, flags, message):
  assert plan.main([*TINY_RUN, *flags]) == 2
  assert message in capsys.readouterr().err


def test_hlo_collectives_sizes():
  hlo = ("  %all-reduce.1 = f32[4,8]{1,0} all-reduce(f32[4,8]{1,0} %x), replica_groups={}\n"
         "  %ag = (bf16[2,3]{1,0}, f32[5]{0}) all-gather-start(bf16[1,3]{1,0} %y)\n"
         "  %add = f32[4,8]{1,0} add(%a, %b)\n")
  got = plan.hlo_collectives(hlo)
  assert got == {"all-reduce": {"count": 1, "bytes": 128, "largest_bytes": 128,
                                "largest": "f32[4,8]"},
                 "all-gather": {"count": 1, "bytes": 32, "largest_bytes": 32,
                                "largest": "(bf16[2,3], f32[5])"}}


def test_parse_bytes():
  assert plan.parse_bytes("16GiB") == 16 * 2**30
  assert plan.parse_bytes("12.5GB") == 12_500_000_000
  assert plan.parse_bytes("1024") == 1024


@pytest.mark.parametrize("name, libtpu_name", [
    ("v2-8", "v2:2x2"), ("v3-8", "v3:2x2"), ("v3-32", "v3:4x4"), ("v3-64", "v3:4x8"),
    ("v3-128", "v3:8x8"), ("v3-2048", "v3:32x32"),
    # v4-N: N TensorCores, N / 2 megacore devices on the slice = N / 4 chips of libtpu's
    # compile-only v4, which lists each chip's 2 TensorCores as devices.
    ("v4-16", "v4:2x2x1"), ("v4-64", "v4:2x2x4"), ("v4-128", "v4:2x4x4"),
    ("v5p-8", "v5p:2x2x1"), ("v5p-128", "v5p:4x4x4"),
    ("v5e-4", "v5e:2x2"), ("v5e-16", "v5e:4x4"), ("v5litepod-16", "v5e:4x4"),
    ("v5e-256", "v5e:16x16"), ("v6e-8", "v6e:2x4"), ("v6e-16", "v6e:4x4"),
    ("v3:4x4", "v3:4x4"), ("v4:2x2x4", "v4:2x2x4"), (" v5e-8 ", "v5e:2x4"),
])
def test_libtpu_topology(name, libtpu_name):
  assert plan.libtpu_topology(name) == libtpu_name


@pytest.mark.parametrize("name", ["v4-8", "v3-16", "v7-8", "v3_32", "V3-32", "v3:4", "32"])
def test_libtpu_topology_unknown(name):
  with pytest.raises(plan.PlanError, match="unknown TPU slice; known: .*v4-{16,32,64"):
    plan.libtpu_topology(name)


@pytest.mark.slow  # 15-30 s here, mostly TPU compile of the tiny step.
@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (optional; CI has none)")
def test_plan_tiny_on_tpu_topology(capsys, monkeypatch):
  # Compiling needs no TPU; another process holding libtpu's lock (a plan, a run) must not
  # make this fail.
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  assert plan.main([*TINY_RUN, "--topology=v3-8", "--device_memory=1GiB"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["platform"] == "tpu" and result["devices"] == 8
  assert result["mesh"] == {"data": 4, "model": 2}
  assert 0 < result["per_device_peak_bytes"] <= 2**30 and result["fits"] is True
  whole_tables = 2 * 32128 * 4 * 4  # As on CPU: about half the frozen tables a device.
  assert whole_tables / 2 <= result["argument_bytes"] < whole_tables
  assert result["collectives"]["all-reduce"]["count"] >= 1
