"""IPT: the autoencoder against NumPy, MSF on a 3-task mixture, IST, IPT -> PT, resume."""

import json
import logging
import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import runs
from prompt_jax.data import skill_gym  # noqa: F401  Registers the gym tasks (evaluator metric).
from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt, effective, init_prompt_params, ipt
from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import evaluation
from prompt_jax.train import optimizer as opt_lib
from prompt_jax.train import trainer
from tests.tiny import copy_task_batches, frozen_params, tiny_config

P, D, I, T = 3, 8, 5, 3


def mixed_batches(start, *, num_tasks=T):
  """The tiny copy task, each row tagged with a task id (a deterministic mix of T tasks)."""
  for i, b in enumerate(copy_task_batches(start), start):
    n = len(b["encoder_input_tokens"])
    yield {**b, "task_ids": ((i + np.arange(n)) % num_tasks).astype(np.int32)}


@pytest.fixture(scope="module")
def bank_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("stage0")
  files = []
  for t in range(T):
    path = root / f"task{t}.npy"
    np.save(path, np.random.default_rng(t).uniform(-0.5, 0.5, (P, D)).astype(np.float32))
    files.append(str(path))
  return files


def numpy_autoencoder(params, bank):
  """Proj: [P*D] -> [I]; Proj_b: [I] -> [D] -> tanh -> [P*D] (the authors' AE_type=1)."""
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
  bank = np.asarray(bank)
  flat = bank.reshape(bank.shape[0], -1).astype(np.float64)
  z = flat @ params["proj"]["kernel"] + params["proj"]["bias"]
  h = np.tanh(z @ params["proj_b"]["hidden"]["kernel"] + params["proj_b"]["hidden"]["bias"])
  out = h @ params["proj_b"]["out"]["kernel"] + params["proj_b"]["out"]["bias"]
  return out.reshape(bank.shape)


def _msf(bank_files, **kw):
  return ipt.MSFPrompt(num_tasks=T, length=P, intrinsic_dim=I,
                       bank=ipt.StageZeroBank(files=tuple(bank_files)), **kw)


def test_autoencoder_matches_numpy_on_fixed_weights(bank_files):
  module = _msf(bank_files)
  params = init_prompt_params(module, jax.random.PRNGKey(0), D)
  rng = np.random.default_rng(5)
  fixed = jax.tree_util.tree_map(lambda x: rng.normal(size=np.shape(x)).astype(np.float32),
                                 params)
  got = effective.effective_prompt(T5Transformer(tiny_config(), prompt=module),
                                   {"prompt": fixed})
  np.testing.assert_allclose(got, numpy_autoencoder(fixed, fixed["bank"]), rtol=2e-5, atol=2e-5)
  assert got.shape == (T, P, D)


def test_linear_init_is_torch_default(bank_files):
  """kaiming_uniform(a=sqrt(5)) weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  p = ipt.ProjB(10).init(jax.random.PRNGKey(0), jnp.zeros((40,)), 64)["params"]
  for layer, fan_in in (("hidden", 40), ("out", 64)):
    bound = 1 / math.sqrt(fan_in)
    for kind in ("kernel", "bias"):
      x = np.asarray(p[layer][kind])
      assert np.abs(x).max() <= bound and np.abs(x).max() > 0.9 * bound, (layer, kind)
    # Uniform on [-b, b] has std b / sqrt(3).
    np.testing.assert_allclose(np.asarray(p[layer]["kernel"]).std(), bound / math.sqrt(3),
                               rtol=0.05)


def test_reconstruction_term_is_alpha_times_mse_over_the_batch(bank_files):
  cfg = tiny_config()
  module = _msf(bank_files, alpha=200.0)
  prompt = init_prompt_params(module, jax.random.PRNGKey(1), cfg.d_model)
  adapter = adapter_lib.ModelAdapter(T5Transformer(cfg, prompt=module))
  batch = next(mixed_batches(0))
  _, metrics = jax.jit(adapter.loss)({**frozen_params(cfg), "prompt": prompt}, batch)
  got = adapter_lib.reduce_metrics(metrics)["loss/prompt/reconstruction"]
  bank = np.asarray(prompt["bank"])
  rows = bank[batch["task_ids"]]
  want = 200.0 * np.mean((numpy_autoencoder(prompt, rows) - rows) ** 2)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert want > 0


def _msf_run(model_dir, bank_files, steps=4):
  cfg = tiny_config()
  module = _msf(bank_files)
  model = T5Transformer(cfg, prompt=module)
  params = {**frozen_params(cfg), "prompt": init_prompt_params(module, jax.random.PRNGKey(2), D)}
  groups = ipt.msf_param_groups(opt_lib.OptimizerConfig(kind="adamw", learning_rate=1e-2,
                                                        total_steps=steps))
  trainable, frozen = opt_lib.split_params(params, groups.labels(params))
  result = trainer.train(model, frozen, trainable, groups=groups, batches=mixed_batches,
                         cfg=trainer.TrainerConfig(model_dir=str(model_dir), train_steps=steps,
                                                   checkpoint_period=2, log_period=1,
                                                   progress_bar=False,
                                                   task_names=("a", "b", "c")))
  return model, frozen, result


@pytest.fixture(scope="module")
def msf_run(tmp_path_factory, bank_files):
  run = tmp_path_factory.mktemp("msf")
  return (run, *_msf_run(run, bank_files))


def test_msf_trains_only_the_autoencoder_and_keeps_the_bank_bitwise(msf_run, bank_files):
  run, model, frozen, result = msf_run
  assert set(opt_lib._flat(result.trainable)) == {
      "prompt/proj/kernel", "prompt/proj/bias", "prompt/proj_b/hidden/kernel",
      "prompt/proj_b/hidden/bias", "prompt/proj_b/out/kernel", "prompt/proj_b/out/bias"}
  bank = np.stack([np.load(f) for f in bank_files])
  np.testing.assert_array_equal(np.asarray(frozen["prompt"]["bank"]), bank)
  losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert all("loss/prompt/reconstruction" in m for m in losses if m["split"] == "train")
  # The exports: reconstructions per task, and Proj_b for IST.
  merged = opt_lib.merge_params(result.trainable, {"prompt": frozen["prompt"]})
  rec = np.load(run / "prompts" / "prompt_4.npy")
  np.testing.assert_allclose(rec, numpy_autoencoder(merged["prompt"], bank), rtol=2e-5,
                             atol=2e-5)
  np.testing.assert_array_equal(np.load(run / "prompts" / "b" / "prompt_4.npy"), rec[1])
  np.testing.assert_array_equal(np.load(run / "prompts" / "ipt_proj_b_out_kernel_4.npy"),
                                result.trainable["prompt"]["proj_b"]["out"]["kernel"])


def test_each_example_sees_its_own_tasks_reconstruction(msf_run):
  _, model, frozen, result = msf_run
  params = opt_lib.merge_params(result.trainable, frozen)
  batch = next(mixed_batches(3))
  ids = batch["task_ids"]

  def encoder_input(p):
    def fn(m):
      emb = m.token_embedder(jnp.asarray(batch["encoder_input_tokens"]))
      tokens = jnp.asarray(batch["encoder_input_tokens"])
      return m.prompt(emb, tokens, tokens > 0, task_ids=jnp.asarray(ids))[0]
    return np.asarray(model.apply({"params": p}, method=fn))

  out = encoder_input(params)
  rec = effective.effective_prompt(model, params)
  # The batch's rows are reconstructed as [B, P*D] and the table as [T, P*D]: the same
  # maps, float32 rounding apart.
  np.testing.assert_allclose(out[:, :P], rec[ids], rtol=1e-5, atol=1e-6)
  # Change task 1's stage-0 prompt: only task-1 examples move.
  moved = jax.tree_util.tree_map(np.asarray, params)
  moved["prompt"]["bank"] = moved["prompt"]["bank"].copy()
  moved["prompt"]["bank"][1] += 0.5
  out2 = encoder_input(moved)
  changed = np.abs(out2 - out).reshape(len(ids), -1).max(axis=1) > 0
  assert set(ids) == {0, 1, 2}
  np.testing.assert_array_equal(changed, ids == 1)


def _ist_module(msf_dir, **kw):
  return ipt.ISTPrompt(length=P, intrinsic_dim=I, proj_b=ipt.ProjBFromRun(str(msf_dir)), **kw)


def _eval_examples():
  batch = next(copy_task_batches(9))
  examples = [{"inputs": row[row > 0], "targets_pretokenized": b"x"}
              for row in batch["encoder_input_tokens"]]
  return examples, {"inputs": batch["encoder_input_tokens"].shape[1], "targets": 4}


def _ist_run(model_dir, msf_dir, steps, batches=copy_task_batches):
  cfg = tiny_config()
  module = _ist_module(msf_dir)
  model = T5Transformer(cfg, prompt=module)
  params = {**frozen_params(cfg), "prompt": init_prompt_params(module, jax.random.PRNGKey(4), D)}
  groups = ipt.ist_param_groups(opt_lib.OptimizerConfig(kind="adamw", learning_rate=0.1,
                                                        total_steps=4))
  trainable, frozen = opt_lib.split_params(params, groups.labels(params))
  examples, lengths = _eval_examples()
  ev = evaluation.Evaluator(model, frozen, ["skill_gym_copy"], split="", feature_lengths=lengths,
                            batch_size=4, examples={"skill_gym_copy": examples})
  predictions = {}

  def evaluator(tr, step):
    predictions[step] = ev.predict(tr, "skill_gym_copy")
    return ev(tr, step)

  result = trainer.train(model, frozen, trainable, groups=groups, batches=batches,
                         cfg=trainer.TrainerConfig(model_dir=str(model_dir), train_steps=steps,
                                                   checkpoint_period=2, log_period=1,
                                                   progress_bar=False), evaluator=evaluator)
  return model, frozen, result, predictions[steps]


@pytest.fixture(scope="module")
def ist_run(msf_run, tmp_path_factory):
  run = tmp_path_factory.mktemp("ist")
  return (run, *_ist_run(run, msf_run[0], 4))


def test_ist_trains_exactly_d_i_parameters_and_its_export_is_a_plain_prompt(msf_run, ist_run):
  run, model, frozen, result, final = ist_run
  assert opt_lib.count_params(result.trainable) == I
  assert list(opt_lib._flat(result.trainable)) == ["prompt/v"]
  # Proj_b is the MSF run's, bitwise, and stays frozen.
  want = msf_run[3].trainable["prompt"]["proj_b"]
  for layer in ("hidden", "out"):
    for kind in ("kernel", "bias"):
      np.testing.assert_array_equal(np.asarray(frozen["prompt"]["proj_b"][layer][kind]),
                                    want[layer][kind])
  # The export is Proj_b(v*) and a plain Prompt evaluating it reproduces the final eval.
  exported = np.load(run / "prompts" / "prompt_4.npy")
  examples, lengths = _eval_examples()
  plain = evaluation.Evaluator(T5Transformer(model.config, prompt=Prompt(P)),
                               {k: v for k, v in frozen.items() if k != "prompt"},
                               ["skill_gym_copy"], split="", feature_lengths=lengths,
                               batch_size=4, examples={"skill_gym_copy": examples})
  assert any(final), "all predictions empty: the comparison would be vacuous"
  assert plain.predict({"prompt": {"prompt": exported}}, "skill_gym_copy") == final
  assert plain({"prompt": {"prompt": exported}}, 4) == result.last_eval_metrics
  # IPT -> PT: a plain prompt initialised from the IST run is that export.
  init = ipt.FromISTRun(str(run))(jax.random.PRNGKey(0), (P, D))
  np.testing.assert_array_equal(np.asarray(init), exported)


def sigterm_at(batch_index):
  """The tiny copy task, but SIGTERM arrives while batch `batch_index` is being fetched."""
  def batches(start):
    for i, b in enumerate(copy_task_batches(start), start):
      if i == batch_index:
        os.kill(os.getpid(), signal.SIGTERM)
      yield b
  return batches


def test_ist_logs_d_i_trainable_and_kill_and_resume_is_bitwise(msf_run, ist_run, tmp_path,
                                                               caplog):
  full = ist_run[3]
  # Killed (SIGTERM) mid-run at step 3, off the checkpoint period: it saves step 3 and stops.
  with pytest.raises(trainer.TrainingInterrupted, match="at step 3"):
    _ist_run(tmp_path, msf_run[0], 4, batches=sigterm_at(2))
  with caplog.at_level(logging.INFO):
    _, _, resumed, _ = _ist_run(tmp_path, msf_run[0], 4)  # The same command again.
  assert f"Parameters: {I} trainable" in caplog.text
  assert "Resumed from checkpoint 3" in caplog.text
  np.testing.assert_array_equal(full.trainable["prompt"]["v"], resumed.trainable["prompt"]["v"])
  np.testing.assert_array_equal(np.load(ist_run[0] / "prompts" / "prompt_4.npy"),
                                np.load(tmp_path / "prompts" / "prompt_4.npy"))


def test_per_task_ist_gives_each_task_its_row(msf_run):
  module = _ist_module(msf_run[0], per_task=True, num_tasks=T)
  params = init_prompt_params(module, jax.random.PRNGKey(0), D)
  assert params["v"].shape == (T, I)
  model = T5Transformer(tiny_config(), prompt=module)
  table = effective.effective_prompt(model, {"prompt": params})
  single = _ist_module(msf_run[0])
  row = effective.effective_prompt(T5Transformer(tiny_config(), prompt=single),
                                   {"prompt": {**params, "v": params["v"][2]}})
  np.testing.assert_allclose(table[2], row, rtol=1e-6, atol=1e-7)


def test_bank_sources_fail_with_clear_messages(bank_files, tmp_path):
  with pytest.raises(ipt.IPTSourceError, match="exactly one of"):
    ipt.StageZeroBank().load((T, P, D))
  with pytest.raises(ipt.IPTSourceError, match=r"must be \(3, 4, 8\)"):
    ipt.StageZeroBank(files=tuple(bank_files)).load((T, 4, D))
  manifest = tmp_path / "stage0.json"
  manifest.write_text(json.dumps({"prompts": {"a": bank_files[0], "b": bank_files[1]}}))
  with pytest.raises(ipt.IPTSourceError, match=r"no prompt for task\(s\) \['c'\]"):
    ipt.StageZeroBank(manifest=str(manifest)).load((T, P, D), ("a", "b", "c"))
  got = ipt.StageZeroBank(manifest=str(manifest)).load((2, P, D), ("b", "a"))
  np.testing.assert_array_equal(got[0], np.load(bank_files[1]))
  with pytest.raises(ipt.IPTSourceError, match="No ipt_proj_b_out_kernel_<step>.npy"):
    ipt.ProjBFromRun(str(tmp_path)).array("out/kernel", (I, D))


def test_the_run_builder_fills_in_task_names_and_count(bank_files):
  module = ipt.MSFPrompt(length=P, intrinsic_dim=I, bank=ipt.StageZeroBank(files=()))
  filled = runs.fit_prompt_to_tasks(module, ["a", "b", "c"])
  assert filled.num_tasks == 3 and filled.task_names == ("a", "b", "c")


def test_param_rules_cover_every_leaf_and_freeze_the_right_ones(msf_run, bank_files):
  cfg = tiny_config()
  ist = init_prompt_params(_ist_module(msf_run[0]), jax.random.PRNGKey(0), D)
  counts = ipt.ist_param_groups().group_counts({**frozen_params(cfg), "prompt": ist})
  assert counts["trainable"] == I
  msf = init_prompt_params(_msf(bank_files), jax.random.PRNGKey(0), D)
  counts = ipt.msf_param_groups().group_counts({**frozen_params(cfg), "prompt": msf})
  assert counts["trainable"] == (P * D * I + I) + (I * D + D) + (D * P * D + P * D)


@pytest.mark.parametrize("method,module_name,groups_name", [
    ("ipt_msf", "MSFPrompt", "msf_param_groups"), ("ipt_ist", "ISTPrompt", "ist_param_groups"),
    ("ipt_pt", "Prompt", "pt_param_groups")])
def test_the_gin_files_bind_the_modules_and_the_authors_adamw(method, module_name, groups_name):
  import gin
  from prompt_jax import cli, configurables
  files = ["runs/prompt_finetune.gin", f"methods/{method}.gin"]
  if method == "ipt_pt":
    files.append("prompts/from_ist_run.gin")
  try:
    cli.parse_gin(files, ["MODEL_DIR = '/m'", "MIXTURE_OR_TASK_NAME = 't'",
                          "INITIAL_CHECKPOINT_PATH = '/c'", "TRAIN_STEPS = 500", "IPT_DIM = 7", "IPT_BANK_MANIFEST = 'm.json'",
                          "IPT_MSF_RUN = '/msf'", "IPT_IST_RUN = '/ist'"])
    module = getattr(configurables, module_name)()
    groups = getattr(configurables, groups_name)()
  finally:
    gin.clear_config()
  cfg = groups.optimizers["trainable"]
  assert (cfg.kind, cfg.total_steps, cfg.max_grad_norm, cfg.adamw_weight_decay) == (
      "adamw", 500, 0.1, 0.0)
  assert cfg.resolved_warmup_steps() == 30  # 6 % of 500.
  if method == "ipt_msf":
    assert (module.intrinsic_dim, module.alpha, module.bank.manifest) == (7, 200.0, "m.json")
    assert cfg.learning_rate == 3e-5
  elif method == "ipt_ist":
    assert (module.intrinsic_dim, module.proj_b.run_dir, cfg.learning_rate) == (7, "/msf", 1e-5)
  else:
    assert module.initializer.run_dir == "/ist"


def test_a_prompt_bank_starts_from_every_row_of_a_per_task_ist_export(tmp_path):
  from prompt_jax.prompts import PromptBank
  rows = np.random.default_rng(0).normal(size=(T, P, D)).astype(np.float32)
  (tmp_path / "prompts").mkdir()
  np.save(tmp_path / "prompts" / "prompt_2.npy", rows[::-1])
  np.save(tmp_path / "prompts" / "prompt_10.npy", rows)  # "latest" is the largest step.
  bank = PromptBank(T, P, initializer=ipt.FromISTRun(str(tmp_path)))
  got = init_prompt_params(bank, jax.random.PRNGKey(0), D)["prompt"]
  np.testing.assert_array_equal(np.asarray(got), rows)
  with pytest.raises(ipt.IPTSourceError, match="leave IPT_IST_TASK empty"):
    init_prompt_params(PromptBank(T, P, initializer=ipt.FromISTRun(str(tmp_path), task="a")),
                       jax.random.PRNGKey(0), D)
