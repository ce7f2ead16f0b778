"""Methods as plug-ins from the CLI: a user's own module via a gin `import`, a prompt bank
on a mixture, and evaluation of what each exports in a fresh process."""

import json
import textwrap

import numpy as np
import pytest

from tests.conftest import T5X_TINY
from tests.test_cli import TINY, _prompt_jax

# A method written here, not in prompt_jax: a prompt scaled by a trainable scalar that has
# its own parameter group and learning rate, plus a sown L2 term.
METHOD_PY = '''
import flax.linen as nn
import gin
import jax.numpy as jnp
import seqio

from prompt_jax.prompts import Prompt


class ScaledPrompt(Prompt):
  @nn.compact
  def prompt(self, d_model):
    raw = self.param("prompt", self.initializer, (self.length, d_model))
    scale = self.param("scale", nn.initializers.ones, ())
    self.sow("losses", "l2", 1e-3 * jnp.sum(raw ** 2))
    return scale * raw


gin.external_configurable(ScaledPrompt, module="my_method")

# A two-task mixture of the gym's no-word tasks (for the prompt bank).
from prompt_jax.data import skill_gym
if "my_two_skills" not in seqio.MixtureRegistry.names():
  seqio.MixtureRegistry.add("my_two_skills", [skill_gym.task_name("upper", False),
                                              skill_gym.task_name("reverse", False)],
                            default_rate=1.0)
'''

METHOD_GIN = '''
import my_method

PROMPT = @my_method.ScaledPrompt()
my_method.ScaledPrompt.length = %PROMPT_LENGTH
my_method.ScaledPrompt.initializer = %PROMPT_INIT

train.param_groups = @optim.ParamGroups()
optim.ParamGroups.rules = [("^prompt/scale$", "scale"), ("^prompt/", "trainable"),
                           ("^(token_embedder|encoder|decoder)/", "frozen")]
optim.ParamGroups.optimizers = {"trainable": @optim.OptimizerConfig(),
                                "scale": @scale/optim.OptimizerConfig()}
scale/optim.OptimizerConfig.learning_rate = 0.001
'''

STEPS = 4


def _args(model_dir, task, fn="train"):
  return [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY}'", "--gin.BATCH_SIZE=4",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 10}",
          f"--gin.{fn}.max{'_eval' if fn == 'train' else ''}_examples=8"]


def _metrics(model_dir, split):
  return [m for m in map(json.loads, (model_dir / "metrics.jsonl").read_text().splitlines())
          if m["split"] == split]


def _saved_prompt_params(run, step):
  """The `prompt/` parameters of a training checkpoint, read with Orbax."""
  import orbax.checkpoint as ocp
  state = ocp.StandardCheckpointer().restore(run / "checkpoints" / str(step) / "state")
  return {k: np.asarray(v) for k, v in state["params"]["prompt"].items()}


def _run(tmp_path, *args):
  proc = _prompt_jax(*args, cwd=tmp_path, extra_path=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture
def user_method(tmp_path):
  (tmp_path / "my_method.py").write_text(METHOD_PY)
  (tmp_path / "my_method.gin").write_text(textwrap.dedent(METHOD_GIN))
  (tmp_path / "imports.gin").write_text("import my_method\n")  # Registers the mixture.
  return tmp_path


@pytest.mark.slow
def test_a_users_own_method_trains_from_gin_and_its_export_evaluates_alike(user_method):
  tmp_path, task = user_method, "skill_gym_reverse_noword"
  run = tmp_path / "run"
  _run(tmp_path, "train", *TINY, "--gin_file=runs/prompt_finetune.gin",
       "--gin_file=my_method.gin", "--gin_file=prompts/sampled_vocab.gin",
       *_args(run, task), f"--gin.TRAIN_STEPS={STEPS}", "--gin.PROMPT_LENGTH=3",
       f"--gin.EVAL_PERIOD={STEPS}", "--gin.CHECKPOINT_PERIOD=2")
  train = _metrics(run, "train")
  assert all("loss/prompt/l2" in m and m["loss/prompt/l2"] > 0 for m in train)
  # The scalar moved at its own rate (Adafactor moves a scalar by at most about lr per
  # step), the rows at theirs (LR 0.3).
  params = {step: _saved_prompt_params(run, step) for step in (2, STEPS)}
  scale_move = abs(float(params[STEPS]["scale"]) - float(params[2]["scale"]))
  assert 0 < scale_move <= 2 * 0.001 * 1.05, scale_move
  row_move = float(np.abs(params[STEPS]["prompt"] - params[2]["prompt"]).mean())
  assert row_move > 10 * scale_move, (row_move, scale_move)
  # What is exported is the effective prompt, scale * rows.
  exported = np.load(run / "prompts" / f"prompt_{STEPS}.npy")
  np.testing.assert_allclose(exported, float(params[STEPS]["scale"]) * params[STEPS]["prompt"],
                             rtol=1e-6)
  # A plain Prompt holding the exported .npy reproduces the run's final eval exactly.
  eval_dir = tmp_path / "eval"
  _run(tmp_path, "eval", *TINY, "--gin_file=runs/prompt_eval.gin",
       *_args(eval_dir, task, "evaluate"),
       f"--gin.PROMPT_FILE='{run / 'prompts' / f'prompt_{STEPS}.npy'}'")
  final = _metrics(run, "eval")[-1]
  fresh = _metrics(eval_dir, "eval")[-1]
  keys = [k for k in final if k.startswith(task)]
  assert keys and {k: fresh[k] for k in keys} == {k: final[k] for k in keys}
  assert ((eval_dir / "inference" / f"{task}-eval.jsonl").read_text()
          == (run / "inference" / f"{task}-{STEPS}.jsonl").read_text())


@pytest.mark.slow
def test_prompt_bank_on_a_mixture_reports_per_task_and_exports_each_task(user_method):
  tmp_path = user_method
  run = tmp_path / "bank"
  tasks = sorted(["skill_gym_upper_noword", "skill_gym_reverse_noword"])
  _run(tmp_path, "train", *TINY, "--gin_file=runs/prompt_finetune.gin",
       "--gin_file=methods/prompt_bank.gin", "--gin_file=prompts/sampled_vocab.gin",
       "--gin_file=imports.gin", *_args(run, "my_two_skills"),
       f"--gin.TRAIN_STEPS={STEPS}", "--gin.PROMPT_LENGTH=3", f"--gin.EVAL_PERIOD={STEPS}")
  assert json.loads((run / "tasks.json").read_text())["task_names"] == tasks
  final = _metrics(run, "eval")[-1]
  assert all(f"{t}/exact_match" in final for t in tasks), final
  bank = np.load(run / "prompts" / f"prompt_{STEPS}.npy")
  assert bank.shape[:2] == (2, 3)
  for i, task in enumerate(tasks):
    alone = run / "prompts" / task / f"prompt_{STEPS}.npy"
    np.testing.assert_array_equal(np.load(alone), bank[i])
  # One task's export, evaluated on its own as a plain prompt, reproduces the run's eval
  # of that task (the other task's export is its bank row, checked just above).
  task = tasks[-1]
  eval_dir = tmp_path / f"eval_{task}"
  _run(tmp_path, "eval", *TINY, "--gin_file=runs/prompt_eval.gin",
       *_args(eval_dir, task, "evaluate"),
       f"--gin.PROMPT_FILE='{run / 'prompts' / task / f'prompt_{STEPS}.npy'}'")
  fresh = _metrics(eval_dir, "eval")[-1]
  assert fresh[f"{task}/exact_match"] == final[f"{task}/exact_match"]
  assert ((eval_dir / "inference" / f"{task}-eval.jsonl").read_text()
          == (run / "inference" / f"{task}-{STEPS}.jsonl").read_text())
