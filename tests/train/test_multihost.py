"""Pods: sharded CLI loading, multi-host start-up, global-batch feeding, URI model dirs.

Runs on the 8 emulated CPU devices of conftest. The two-process loopback runs are in
tests/train/test_multiprocess.py.
"""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from prompt_jax import cli, runs
from prompt_jax.data import skill_gym  # noqa: F401  Registers the gym tasks.
from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt, initializers
from prompt_jax.train import builder, checkpointing, multihost, partitioning, paths
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import trainer
from prompt_jax.train.metrics_writer import read_metrics
from tests.conftest import T5X_TINY
from tests.tiny import copy_task_batches, frozen_params, tiny_config

TASK = "skill_gym_reverse_noword"


def _flat(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_cli_load_leaves_every_split_parameter_sharded():
  """What `prompt-jax train` loads on a (4, 2) mesh: no device holds a whole split kernel."""
  mesh = partitioning.make_mesh(2)
  prompt = Prompt(3, initializer=initializers.SampledVocab(population=100))
  built = runs.build_model(str(T5X_TINY), prompt, TASK, mesh=mesh)
  want = _flat(partitioning.shardings_for(
      builder.abstract_params(T5Transformer(built.adapter.config)), mesh))
  split = 0
  for name, x in _flat(built.frozen).items():
    assert isinstance(x, jax.Array), name
    spec = want[name].spec
    assert x.sharding.is_equivalent_to(want[name], x.ndim), (name, x.sharding, spec)
    if any(axis is not None for axis in spec):
      split += 1
      assert all(s.data.shape != x.shape for s in x.addressable_shards), name
      # The model axis splits the kernel: the two halves on one data row differ in place.
      assert len({str(s.index) for s in x.addressable_shards}) == mesh.shape["model"], name
  # Embedding, logits_dense, q / k / v / o and MLP kernels of 2+2 layers (cross-attention too).
  assert split >= 20, split
  assert built.trainable["prompt"]["prompt"].shape == (3, 4)


def test_precision_macros_load_bf16_weights(monkeypatch):
  monkeypatch.setattr(runs, "precision", lambda: {"param_dtype": "bfloat16",
                                                  "dtype": "bfloat16"})
  model, params = runs._load(str(T5X_TINY), {}, partitioning.make_mesh(2))
  assert model.config.dtype == "bfloat16"
  assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jax.numpy.dtype('bfloat16')}


def test_precision_rejects_an_unknown_dtype():
  with pytest.raises(runs.UserError, match="PARAM_DTYPE must be one of"):
    runs.precision(param_dtype="float16")


def test_activation_constraints_reach_the_compiled_step():
  """The rules context makes the model's `with_logical_constraint`s real constraints."""
  cfg = tiny_config()
  setup = builder.build(T5Transformer(cfg, prompt=Prompt(2)), opt_lib.PROMPT_TUNING,
                        partitioning.make_mesh(2))
  batch = setup.put_batch(next(copy_task_batches(0, batch_size=8)))
  state = jax.eval_shape(lambda: setup.init_state(
      {"prompt": {"prompt": np.zeros((2, cfg.d_model), np.float32)}}, 0))
  text = setup.step_fn.lower(state, setup.abstract_frozen, batch).as_text()
  assert 'sharding_constraint' in text and '{"data"}, {}, {"model"}' in text


def test_detect_launch():
  assert multihost.detect_launch({}) is None
  assert multihost.detect_launch({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert multihost.detect_launch({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"
  assert multihost.detect_launch({"SLURM_NTASKS": "1"}) is None
  assert multihost.detect_launch({"SLURM_NTASKS": "4"}) == "slurm"
  assert multihost.detect_launch({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"
  assert multihost.detect_launch({}, "10.0.0.1:1234") == "explicit"
  assert multihost.detect_launch({"PROMPT_JAX_DISTRIBUTED": "1"}) == "auto"


def test_initialize_refuses_incomplete_settings_and_a_started_backend():
  env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}
  with pytest.raises(multihost.DistributedError, match="num processes is missing"):
    multihost.initialize(env=env)
  with pytest.raises(multihost.DistributedError, match=r"process_id=2 must be in \[0, "):
    multihost.initialize(env={**env, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})
  jax.devices()  # This test process's backend is up: too late to join a job.
  with pytest.raises(multihost.DistributedError, match="backend was started before"):
    multihost.initialize(env={**env, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
  assert multihost.initialize(env={}) is False


def test_cli_distributed_failure_is_exit_2(capsys):
  code = cli.main(["train", "--gin_file=runs/prompt_finetune.gin",
                   "--coordinator_address=127.0.0.1:1", "--num_processes=2"])
  assert code == 2
  assert "process id is missing" in capsys.readouterr().err


@pytest.mark.parametrize("num_partitions", [1, 2, 8])
def test_put_batch_gives_each_device_its_rows(num_partitions):
  setup_mesh = partitioning.make_mesh(num_partitions)
  sharding = partitioning.data_sharding(setup_mesh)
  rows = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
  x = builder.global_array(rows, sharding)
  for shard in x.addressable_shards:
    np.testing.assert_array_equal(shard.data, rows[shard.index])
  np.testing.assert_array_equal(np.asarray(x), rows)


def test_a_batch_the_data_axis_does_not_divide_is_refused():
  with pytest.raises(ValueError, match="cannot be fed to a mesh whose 'data' axis has 4"):
    builder.global_array(np.zeros((6, 3), np.int32),
                         partitioning.data_sharding(partitioning.make_mesh(2)))


def test_to_host_reads_sharded_and_replicated_arrays():
  mesh = partitioning.make_mesh(4)
  x = jax.device_put(np.arange(16.0).reshape(4, 4),
                     jax.sharding.NamedSharding(mesh, PartitionSpec(None, "model")))
  out = multihost.to_host({"a": x, "b": np.ones(2)})
  np.testing.assert_array_equal(out["a"], np.arange(16.0).reshape(4, 4))
  assert isinstance(out["a"], np.ndarray)


def test_paths_take_file_uris_and_remote_schemes():
  assert str(paths.as_path("file:///tmp/run")) == "/tmp/run"
  assert paths.is_local("file:///tmp/run") and paths.is_local("/tmp/run")
  assert not paths.is_local("gs://bucket/run")
  assert str(paths.as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"


def test_training_into_a_file_uri_model_dir(tmp_path):
  """Every model-dir write goes through the path layer: a URI lands in the local dir."""
  cfg = tiny_config()
  prompt = Prompt(2)
  frozen = frozen_params(cfg)
  init = {"prompt": {"prompt": np.full((2, cfg.d_model), 0.1, np.float32)}}
  uri = f"file://{tmp_path}/run"
  tcfg = trainer.TrainerConfig(model_dir=uri, train_steps=2, checkpoint_period=1,
                               log_period=1, progress_bar=False)
  result = trainer.train(T5Transformer(cfg, prompt=prompt), frozen, init,
                         groups=opt_lib.PROMPT_TUNING, batches=copy_task_batches, cfg=tcfg)
  run = tmp_path / "run"
  assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
  np.testing.assert_array_equal(np.load(run / "prompts" / "prompt_2.npy"),
                                result.trainable["prompt"]["prompt"])
  assert (run / "prompts" / "peft_2").is_dir()
  assert [m["step"] for m in read_metrics(uri)] == [1, 2]
  assert not (tmp_path / "file:").exists()
  # A restart through the URI finds the checkpoints.
  assert checkpointing.Checkpointer(uri).all_steps() == [1, 2]


@pytest.mark.parametrize("dcn, message", [
    ((1, 2), "places 2 processes but the job has 1"),
    ((1,), "must be two positive ints"),
    ((1, 0), "must be two positive ints"),
    ((True, 1), "must be two positive ints"),
])
def test_dcn_mesh_shape_errors_name_the_fix(dcn, message):
  with pytest.raises(ValueError, match=message):
    partitioning.check_dcn_mesh_shape((4, 2), dcn, num_processes=1)
  with pytest.raises(ValueError, match="does not tile the mesh"):
    partitioning.check_dcn_mesh_shape((4, 2), (1, 4), num_processes=4)
  assert partitioning.check_dcn_mesh_shape((4, 2), (2, 2), num_processes=4) == (2, 2)


def test_a_dcn_mesh_shape_that_cannot_hold_is_exit_2_before_loading(capsys, tmp_path):
  argv = ["train", "--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin",
          "--gin_file=runs/prompt_finetune.gin", "--gin_file=methods/prompt_tuning.gin",
          "--gin_file=prompts/sampled_vocab.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
          "--gin.MIXTURE_OR_TASK_NAME='skill_gym_reverse_noword'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY}'", "--gin.BATCH_SIZE=8",
          "--gin.DCN_MESH_SHAPE=(1, 2)"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "DCN_MESH_SHAPE=(1, 2) places 2 processes but the job has 1" in err, err
  assert not (tmp_path / "run").exists()
