"""`prompt-jax plan`: the tiny config's train step compiled for 8 emulated devices."""

import json

import pytest

from prompt_jax import plan

TINY_RUN = ["--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin",
            "--gin_file=runs/prompt_finetune.gin", "--gin_file=methods/prompt_tuning.gin",
            "--gin_file=prompts/sampled_vocab.gin", "--gin.BATCH_SIZE=8",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
            "--gin.PROMPT_LENGTH=5", "--gin.NUM_PARTITIONS=2"]


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
    (["--topology=v4-64"], "no TPU topology"),
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
  assert got == {"all-reduce": {"count": 1, "bytes": 128, "largest_bytes": 128},
                 "all-gather": {"count": 1, "bytes": 32, "largest_bytes": 32}}


def test_parse_bytes():
  assert plan.parse_bytes("16GiB") == 16 * 2**30
  assert plan.parse_bytes("12.5GB") == 12_500_000_000
  assert plan.parse_bytes("1024") == 1024
