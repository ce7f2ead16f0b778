"""EPT-style prompt: identity at init, offset positions, switches, budget, groups, export, resume."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.models import T5Transformer
from prompt_jax.prompts import Prompt, ept, init_prompt_params
from prompt_jax.prompts import effective
from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import builder, checkpointing, trainer
from prompt_jax.train import optimizer as opt_lib
from tests.tiny import copy_task_batches, frozen_params, tiny_config

S, L_MAX, BUDGET = 3, 9, 40  # d_model 8: budget 320 parameters.
CONFIGS = {
    "dept": dict(),
    "fusion_B": dict(fusion=True),
    "fusion_AB": dict(fusion=True, fusion_memory="AB"),
    "multispace": dict(num_subspaces=3),
    "ept": dict(fusion=True, num_subspaces=3),
    "full_rank_maps": dict(num_subspaces=2, subspace_rank=0, projection_residual=False),
}


def _module(**kw):
  return ept.EPTPrompt(**{"length": S, "max_length": L_MAX, "budget_length": BUDGET, **kw})


def _tokens():
  return jnp.array([[5, 6, 7, 8, 9, 1, 0], [3, 4, 1, 0, 0, 0, 0]], jnp.int32)  # [B=2, L=7]


def _setup(seed=0, **kw):
  cfg = tiny_config()
  module = _module(**kw)
  params = {**frozen_params(cfg), "prompt": init_prompt_params(module, jax.random.PRNGKey(seed),
                                                               cfg.d_model)}
  return cfg, module, params


def _randomize(params, key, names=("B",)):
  """Non-init values for some prompt leaves (e.g. B != 0), so the offset is live."""
  prompt = dict(params["prompt"])
  for i, name in enumerate(names):
    prompt[name] = jax.random.normal(jax.random.fold_in(key, i), np.shape(prompt[name]))
  return {**params, "prompt": prompt}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_at_init_the_logits_equal_a_plain_prompt_of_the_same_rows(name):
  cfg, module, params = _setup(**CONFIGS[name])
  tok = _tokens()
  logits = T5Transformer(cfg, prompt=module).apply({"params": params}, tok, tok[:, :4])
  plain = {**params, "prompt": {"prompt": params["prompt"]["prompt"]}}
  want = T5Transformer(cfg, prompt=Prompt(S)).apply({"params": plain}, tok, tok[:, :4])
  if name == "full_rank_maps":  # sum_k g_k I = I only up to float32 rounding of the gate.
    np.testing.assert_allclose(logits, want, rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_array_equal(logits, want)


def test_the_offset_lands_on_its_own_input_positions_shifted_by_the_prompt():
  cfg, module, params = _setup()
  params = _randomize(params, jax.random.PRNGKey(1))
  tok = _tokens()
  embedded = jax.random.normal(jax.random.PRNGKey(2), (2, 7, cfg.d_model))
  mask = tok > 0

  def combined(p):
    return module.apply({"params": p["prompt"]}, embedded, tok, mask)

  base, base_mask = combined(params)
  assert base.shape == (2, S + 7, cfg.d_model)
  # Padding positions never change; valid ones carry exactly their row of the offset.
  offset = (8.0 / np.sqrt(params["prompt"]["A"].shape[1])) * (
      np.asarray(params["prompt"]["A"]) @ np.asarray(params["prompt"]["B"]))
  for b in range(2):
    n = int(mask[b].sum())
    np.testing.assert_array_equal(base[b, S + n:], embedded[b, n:])
    np.testing.assert_allclose(base[b, S:S + n], embedded[b, :n] + offset[:n], rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_array_equal(base_mask[:, :S], True)
  for j in (0, 2, 4):  # A's row j moves row j of A @ B: encoder position S + j only.
    moved = dict(params["prompt"], A=params["prompt"]["A"].at[j].add(1.0))
    out, _ = combined({"prompt": moved})
    changed = np.nonzero(np.any(np.asarray(out != base), axis=(0, 2)))[0]
    assert changed.tolist() == [S + j], (j, changed)
    row1_moved = bool(np.any(out[1, S + j] != base[1, S + j]))
    assert row1_moved == (j < 3), j  # Row 1 has 3 valid tokens: j = 4 is its padding.
  # At the model level, a change of the offset at a padding-only position changes nothing.
  model = T5Transformer(cfg, prompt=module)
  logits = model.apply({"params": params}, tok, tok[:, :4])
  pad_only = dict(params["prompt"], A=params["prompt"]["A"].at[6].add(5.0))  # Both rows pad.
  again = model.apply({"params": {**params, "prompt": pad_only}}, tok, tok[:, :4])
  np.testing.assert_array_equal(logits, again)


def test_inputs_longer_than_l_max_are_cut_and_shorter_ones_use_the_first_rows():
  cfg, module, params = _setup()
  embedded = jnp.ones((1, L_MAX + 4, cfg.d_model))
  tok = jnp.full((1, L_MAX + 4), 5, jnp.int32)
  out, mask = module.apply({"params": params["prompt"]}, embedded, tok, tok > 0)
  assert out.shape == (1, S + L_MAX, cfg.d_model) and mask.shape == (1, S + L_MAX)


def test_switches_create_only_their_parameters():
  d = 8
  keys = lambda **kw: set(init_prompt_params(_module(**kw), jax.random.PRNGKey(0), d))
  assert keys() == {"prompt", "A", "B"}  # Fusion off: no Wq / Wk / Wv.
  assert keys(fusion=True) == {"prompt", "A", "B", "fusion"}
  assert set(init_prompt_params(_module(fusion=True), jax.random.PRNGKey(0), d)["fusion"]) == {
      "Wq", "Wk", "Wv", "Wo"}
  proj = init_prompt_params(_module(num_subspaces=1, gate=False), jax.random.PRNGKey(0), d)
  assert set(proj) == {"prompt", "A", "B", "projection"} and "Wg" not in proj["projection"]
  with pytest.raises(ValueError, match="projection_residual"):
    _module(num_subspaces=2, subspace_rank=2, projection_residual=False)


@pytest.mark.parametrize("rank", [0, 2])
def test_one_subspace_without_gate_is_one_linear_map(rank):
  d = 8
  module = _module(num_subspaces=1, gate=False, subspace_rank=rank,
                   projection_residual=rank > 0)
  params = init_prompt_params(module, jax.random.PRNGKey(0), d)
  key = jax.random.PRNGKey(4)
  proj = {k: jax.random.normal(jax.random.fold_in(key, i), v.shape)
          for i, (k, v) in enumerate(params["projection"].items())}
  params = {**params, "projection": proj}
  got = module.apply({"params": params}, d, method=lambda m, d: m.prompt(d))
  p = np.asarray(params["prompt"])
  want = p @ np.asarray(proj["W"][0]) if rank == 0 else p + p @ (
      np.asarray(proj["U"][0]) @ np.asarray(proj["V"][0]))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_budget_matching_gives_depts_example_and_start_up_counts(caplog):
  assert ept.budget_match(100, 768, 256) == (60, 30)
  assert ept.budget_rank(100, 768, 256, 60) == 30
  caplog.set_level("INFO")
  module = ept.EPTPrompt(length=60, max_length=256, budget_length=100)
  params = init_prompt_params(module, jax.random.PRNGKey(0), 768)
  assert opt_lib.count_params(params) == 100 * 768
  assert "76,800 trainable" in caplog.text and "100-token prompt: 76,800" in caplog.text
  # Full EPT-style (methods/ept.gin at T5-Base): fusion and projection count too.
  full = ept.EPTPrompt(length=40, max_length=256, fusion=True, num_subspaces=4)
  assert full.resolved_rank(768) == 18
  n = opt_lib.count_params(init_prompt_params(full, jax.random.PRNGKey(0), 768))
  assert 100 * 768 - (256 + 768) < n <= 100 * 768
  with pytest.raises(ValueError, match="less than one rank"):
    ept.budget_rank(100, 768, 256, 99)


def test_gate_is_reported_as_a_diagnostic_and_never_added_to_the_loss():
  cfg, module, params = _setup(num_subspaces=3)
  batch = next(copy_task_batches(0, batch_size=2, length=5))
  loss, metrics = adapter_lib.ModelAdapter(T5Transformer(cfg, prompt=module)).loss(params, batch)
  gate = [float(metrics[f"diag/prompt/projection/gate/{k}"][0]) for k in range(3)]
  assert np.isclose(sum(gate), 1.0, atol=1e-6) and min(gate) > 0
  ce, z = metrics["cross_entropy"], metrics["z_loss"]
  np.testing.assert_allclose(loss, (ce[0] + z[0]) / ce[1], rtol=1e-6)
  assert not any(k.startswith("loss/") for k in metrics)


def test_two_learning_rates_move_their_groups_and_the_t5_stays_bitwise_frozen():
  cfg, module, params = _setup(fusion=True, num_subspaces=2)
  # B != 0 makes the offset and the fusion memory live; the other weights keep their init,
  # so at step 1 the mixer's gradient reaches Wo and V (the maps that start at zero).
  params = _randomize(params, jax.random.PRNGKey(5))
  lrs = {"prompt": 0.3, "low_rank": 1e-3, "mixer": 1e-2}
  groups = ept.param_groups(lrs["prompt"], lrs["low_rank"], lrs["mixer"])
  model = T5Transformer(cfg, prompt=module)
  trainable, frozen = opt_lib.split_params(params, groups.labels(params))
  assert set(frozen) == {"token_embedder", "encoder", "decoder"}
  frozen_before = jax.tree_util.tree_map(np.array, frozen)
  setup = builder.build(model, groups, builder.make_mesh(1, jax.devices()[:1]),
                        enable_dropout=False)
  state = setup.init_state(trainable, 0)
  placed = setup.put_frozen(frozen)
  state, _ = setup.step_fn(state, placed, setup.put_batch(next(copy_task_batches(0))))
  after = jax.device_get(state.params)["prompt"]
  moves = {"prompt": [after["prompt"] - trainable["prompt"]["prompt"]],
           "low_rank": [after["B"] - trainable["prompt"]["B"]],
           "mixer": [after["fusion"]["Wo"] - trainable["prompt"]["fusion"]["Wo"],
                     after["projection"]["V"] - trainable["prompt"]["projection"]["V"]]}
  for group, deltas in moves.items():  # Adafactor's first step moves each entry by ~lr.
    delta = np.abs(np.concatenate([np.ravel(x) for x in deltas]))
    assert 0.5 * lrs[group] < delta.mean() <= 1.05 * lrs[group], (group, delta.mean())
  for x, y in zip(jax.tree_util.tree_leaves(frozen_before),
                  jax.tree_util.tree_leaves(jax.device_get(placed))):
    np.testing.assert_array_equal(x, y)


def test_export_writes_prompt_and_offset_and_offset_prompt_reproduces_logits(tmp_path):
  cfg, module, params = _setup(fusion=True, num_subspaces=3)
  key = jax.random.PRNGKey(6)
  params = _randomize(params, key)
  params["prompt"]["fusion"] = {k: jax.random.normal(jax.random.fold_in(key, i), v.shape)
                                for i, (k, v) in enumerate(params["prompt"]["fusion"].items())}
  model = T5Transformer(cfg, prompt=module)
  paths = checkpointing.export_run_prompts(model, {"prompt": params["prompt"]}, tmp_path, 7)
  assert sorted(p.name for p in paths) == ["input_offset_7.npy", "prompt_7.npy"]
  assert not (tmp_path / "prompts" / "peft_7").exists()
  prompt = np.load(tmp_path / "prompts" / "prompt_7.npy", allow_pickle=False)
  offset = np.load(tmp_path / "prompts" / "input_offset_7.npy", allow_pickle=False)
  assert prompt.shape == (S, cfg.d_model) and offset.shape == (L_MAX, cfg.d_model)
  tok = _tokens()
  want = model.apply({"params": params}, tok, tok[:, :4])
  served = T5Transformer(cfg, prompt=ept.OffsetPrompt(S, L_MAX))
  got = served.apply({"params": {**params, "prompt": {"prompt": prompt,
                                                      "input_offset": offset}}}, tok, tok[:, :4])
  np.testing.assert_array_equal(got, want)
  with pytest.raises(effective.PeftUnsupportedError, match="PEFT has no EPT-style"):
    effective.require_peft_exportable(model, prompt)


def _train(model_dir, steps, module, params):
  groups = ept.param_groups(0.3, 1e-2, 1e-2)
  trainable, frozen = opt_lib.split_params(params, groups.labels(params))
  cfg = trainer.TrainerConfig(model_dir=str(model_dir), train_steps=steps, checkpoint_period=2,
                              log_period=1, progress_bar=False, enable_dropout=False)
  model = T5Transformer(tiny_config(), prompt=module)
  return trainer.train(model, frozen, trainable, groups=groups, batches=copy_task_batches,
                       cfg=cfg)


def test_resume_ends_bitwise_where_an_uninterrupted_run_ends(tmp_path):
  _, module, params = _setup(fusion=True, num_subspaces=2)
  straight = _train(tmp_path / "straight", 4, module, params)
  _train(tmp_path / "split", 2, module, params)
  resumed = _train(tmp_path / "split", 4, module, params)
  assert resumed.step == straight.step == 4
  for x, y in zip(jax.tree_util.tree_leaves(straight.trainable),
                  jax.tree_util.tree_leaves(resumed.trainable)):
    np.testing.assert_array_equal(x, y)
  # Training moved the low-rank part, so the offset is live in the exported file.
  assert np.any(np.load(tmp_path / "split" / "prompts" / "input_offset_4.npy") != 0)


class _DiagnosedPrompt(Prompt):
  """A plain prompt that sows a scalar and a vector diagnostic (the adapter's generic seam)."""

  @nn.compact
  def prompt(self, d_model):
    raw = self.param("prompt", self.initializer, (self.length, d_model))
    self.sow("diagnostics", "norm", jnp.sum(raw ** 2))
    self.sow("diagnostics", "row_means", jnp.mean(raw, axis=1))
    return raw


def test_sown_diagnostics_are_reported_flattened_and_never_change_the_loss():
  cfg = tiny_config()
  frozen = frozen_params(cfg)
  module = _DiagnosedPrompt(2)
  params = {**frozen, "prompt": init_prompt_params(module, jax.random.PRNGKey(0), cfg.d_model)}
  batch = next(copy_task_batches(0, batch_size=2))
  loss, metrics = adapter_lib.ModelAdapter(T5Transformer(cfg, prompt=module)).loss(params, batch)
  plain, _ = adapter_lib.ModelAdapter(T5Transformer(cfg, prompt=Prompt(2))).loss(params, batch)
  np.testing.assert_array_equal(loss, plain)
  raw = np.asarray(params["prompt"]["prompt"])
  np.testing.assert_allclose(metrics["diag/prompt/norm"][0], np.sum(raw ** 2), rtol=1e-6)
  for i in range(2):
    np.testing.assert_allclose(metrics[f"diag/prompt/row_means/{i}"][0], raw[i].mean(),
                               rtol=1e-5, atol=1e-7)


def test_a_2x4_mesh_gives_the_single_device_loss():
  """The replicated A / B / fusion / projection parameters shard like the prompt."""
  cfg, module, params = _setup(fusion=True, num_subspaces=2)
  params = _randomize(params, jax.random.PRNGKey(7))
  groups = ept.param_groups(0.3, 1e-2, 1e-2)
  trainable, frozen = opt_lib.split_params(params, groups.labels(params))
  model = T5Transformer(cfg, prompt=module)

  def losses(mesh):
    setup = builder.build(model, groups, mesh, enable_dropout=False)
    state, placed = setup.init_state(trainable, 0), setup.put_frozen(frozen)
    data, out = copy_task_batches(0), []
    for _ in range(2):
      state, metrics = setup.step_fn(state, placed, next(data))
      out.append(adapter_lib.reduce_metrics(metrics)["loss"])
    return out

  single = losses(builder.make_mesh(1, jax.devices()[:1]))
  np.testing.assert_allclose(losses(builder.make_mesh(4)), single, rtol=2e-5, atol=2e-6)
