"""Prompt ensembling in one pass (Lester et al. 2021, Section 6: N prompts, one frozen model).

N prompt files for one task become one `PromptBank` of N members; every example is
replicated N times, copy m carrying task id m (so it is read behind member m's prompt), and
the N copies go through the model together: one decode (or one scoring pass) for the whole
ensemble instead of N evaluations. Each member's predictions are then scored on their own
(the task's postprocessor and metrics), and the members are combined by a vote.

Vote rules (the paper says "majority voting"; the tie rules and the log-likelihood option
are our design):

* `majority` (default). Generation: each member votes for its *postprocessed* prediction;
  the value with the most votes wins. Among values with equally many votes, the one whose
  raw prediction (the first voter's decoded tokens) has the highest log-likelihood summed
  over all N members wins; an exact tie goes to the value whose first voter has the lowest
  member index. Rank classification: each member votes for its argmax label (ties inside a
  member go to the earlier label, as in single-prompt rank classification); among labels with
  equally many votes, the highest summed log-likelihood over the N members, then the
  earlier label.
* `loglik`: the candidate with the highest log-likelihood summed over the N members. Rank
  classification: every label is a candidate. Generation: every distinct member output is
  (scored under every member).

Shapes: M members, E examples, C labels, T target length; a row of a replicated batch is
(example e, member m) at index e * M + m.

A member file is [P, D] (or [K, P, D] for a K-task mixture export, K = the mixture's task
count); all members must have one shape. The bank then holds M * K prompts and task k of
member m reads bank row m * K + k.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Hashable, Mapping, Sequence

import jax
import numpy as np

from prompt_jax.prompts import PromptBank, initializers
from prompt_jax.train import adapter as adapter_lib
from prompt_jax.train import evaluation, multihost

Example = Mapping[str, Any]
VOTES = ("majority", "loglik")
EvalResult = evaluation.EvalResult


# ---------------------------------------------------------------------------------------
# Member files.


def resolve_prompt_files(spec: str | Sequence[str]) -> list[pathlib.Path]:
  """PROMPT_FILES -> the member files: a list of paths, or a dir (its `*.npy`, sorted).

  Raises:
    FileNotFoundError: a listed file or the dir does not exist.
    initializers.PromptFileError: fewer than one file, or an empty dir.
  """
  if isinstance(spec, (str, pathlib.Path)):
    path = pathlib.Path(spec)
    if not path.exists():
      raise FileNotFoundError(f"PROMPT_FILES: {path} does not exist (give a list of .npy "
                              "files or a dir holding them).")
    files = sorted(path.glob("*.npy")) if path.is_dir() else [path]
    if not files:
      raise initializers.PromptFileError(f"PROMPT_FILES: the dir {path} holds no .npy files.")
    return files
  files = [pathlib.Path(p) for p in spec]
  if not files:
    raise initializers.PromptFileError("PROMPT_FILES is an empty list; name the member .npy "
                                       "files (or a dir holding them).")
  for f in files:
    if not f.exists():
      raise FileNotFoundError(f"PROMPT_FILES: member {f} does not exist.")
  return files


def load_members(files: Sequence[pathlib.Path]) -> np.ndarray:
  """The member prompts stacked: [M, P, D] (or [M, K, P, D]); all must share one shape."""
  arrays = [initializers.load_npy_prompt(f) for f in files]
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1:
    listing = ", ".join(f"{f.name} {a.shape}" for f, a in zip(files, arrays))
    raise initializers.PromptFileError(
        f"The ensemble's prompt files must share one shape (one bank holds them); got "
        f"{listing}. Ensemble prompts of one length and width.")
  return np.stack([np.asarray(a, np.float32) for a in arrays])


def bank(members: np.ndarray, placement: str = "prefix") -> tuple[PromptBank, dict]:
  """The one-pass bank module and its parameters for members [M, P, D] / [M, K, P, D]."""
  rows = members.reshape((-1, *members.shape[-2:]))  # [M * K, P, D]
  module = PromptBank(rows.shape[0], rows.shape[1], placement=placement)
  return module, {"prompt": {"prompt": rows}}


def row_ids(num_examples: int, num_members: int, task_id: int = 0,
            tasks_per_member: int = 1) -> np.ndarray:
  """Bank row per replicated row [E * M]: row e * M + m reads member m's prompt of the task."""
  members = np.tile(np.arange(num_members), num_examples)
  return (members * tasks_per_member + task_id).astype(np.int32)


# ---------------------------------------------------------------------------------------
# Votes (pure).


def vote_key(value: Any) -> Hashable:
  """A hashable stand-in for a postprocessed value (dicts, lists, arrays included)."""
  try:
    hash(value)
    return value
  except TypeError:
    return json.dumps(value, sort_keys=True, default=repr)


def tally(keys: Sequence[Hashable]) -> list[list[int]]:
  """Voters grouped by value, most votes first, then by first voter: [[members], ...]."""
  groups: dict[Hashable, list[int]] = {}
  for m, key in enumerate(keys):
    groups.setdefault(key, []).append(m)
  return sorted(groups.values(), key=lambda voters: (-len(voters), voters[0]))


def top_groups(groups: list[list[int]]) -> list[list[int]]:
  """The groups tied for the most votes."""
  return [g for g in groups if len(g) == len(groups[0])]


def pick(candidates: Sequence[int], summed: Sequence[float]) -> int:
  """The candidate with the highest summed log-likelihood; ties to the earlier candidate."""
  return int(candidates[int(np.argmax(np.asarray(summed, np.float64)))])


def vote_labels(scores: np.ndarray, vote: str = "majority") -> np.ndarray:
  """Rank-classification vote over members' label scores [M, E, C] -> label index [E]."""
  check_vote(vote)
  summed = scores.sum(axis=0)  # [E, C]
  if vote == "loglik":
    return np.argmax(summed, axis=1)
  argmax = np.argmax(scores, axis=2)  # [M, E]
  out = np.zeros(scores.shape[1], np.int64)
  for e in range(scores.shape[1]):
    counts = np.bincount(argmax[:, e], minlength=scores.shape[2])
    tied = np.flatnonzero(counts == counts.max())
    out[e] = pick(tied, summed[e, tied])
  return out


def check_vote(vote: str) -> None:
  if vote not in VOTES:
    raise ValueError(f"Unknown ensemble vote {vote!r}; use one of {VOTES}.")


def candidates_to_score(keys: Sequence[Sequence[Hashable]], vote: str) -> list[list[int]]:
  """Generation: per example, the members whose outputs need the ensemble's log-likelihood.

  Args:
    keys: [M][E] vote keys of the postprocessed predictions.
    vote: "majority" (only ties need scores) or "loglik" (every distinct value does).

  Returns:
    Per example the first voter of each candidate value, in tally order ([] = no scoring).
  """
  check_vote(vote)
  out = []
  for e in range(len(keys[0])):
    groups = tally([k[e] for k in keys])
    contenders = groups if vote == "loglik" else top_groups(groups)
    out.append([g[0] for g in contenders] if len(contenders) > 1 else [])
  return out


def vote_generation(keys: Sequence[Sequence[Hashable]],
                    summed: Mapping[tuple[int, int], float], vote: str = "majority"
                    ) -> list[int]:
  """Generation vote -> the winning member per example (its raw prediction is the output).

  Args:
    keys: [M][E] vote keys of the members' postprocessed predictions.
    summed: {(example, member): log-likelihood of that member's prediction summed over all
      members}, for every candidate `candidates_to_score` named.
    vote: see the module doc.
  """
  winners = []
  for e, cands in enumerate(candidates_to_score(keys, vote)):
    if not cands:
      winners.append(tally([k[e] for k in keys])[0][0])
    else:
      winners.append(pick(cands, [summed[(e, m)] for m in cands]))
  return winners


# ---------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass
class EnsembleResult:
  """One task's ensemble evaluation.

  Attributes:
    members: each member's own result (its metrics as if evaluated alone).
    ensemble: the vote's result.
    winners: generation: the member whose prediction the vote chose, per example.
  """
  members: list[EvalResult]
  ensemble: EvalResult
  winners: list[int] | None = None

  def metrics(self) -> dict[str, float]:
    """{metric: ensemble, member_<i>/metric, members_mean/metric, members_best/metric}.

    `members_best` is the best member per metric (max, every metric here being
    higher-is-better), so two metrics may come from different members.
    """
    out = dict(self.ensemble.metrics)
    names = list(self.members[0].metrics)
    for i, r in enumerate(self.members):
      out.update({f"member_{i}/{k}": v for k, v in r.metrics.items()})
    for k in names:
      values = [r.metrics[k] for r in self.members]
      out[f"members_mean/{k}"] = float(np.mean(values))
      out[f"members_best/{k}"] = float(np.max(values))
    return out


def format_table(metrics: Mapping[str, float], num_members: int) -> str:
  """Lester Table 3's columns from flat `<task>/...` metrics: mean, best, ensemble."""
  rows = [f"| task | metric | mean of {num_members} | best of {num_members} | ensemble |",
          "|---|---|---|---|---|"]
  for key in metrics:
    if "/members_mean/" not in key:
      continue
    task, metric = key.split("/members_mean/")
    rows.append(f"| {task} | {metric} | {metrics[key]:.2f} | "
                f"{metrics[f'{task}/members_best/{metric}']:.2f} | "
                f"{metrics[f'{task}/{metric}']:.2f} |")
  return "\n".join(rows)


# ---------------------------------------------------------------------------------------
# The one-pass evaluator.


def _batched(fn, rows: Sequence[tuple], batch_size: int) -> np.ndarray:
  """`fn(chunk)` over fixed-size chunks (the last filled with repeats), outputs stacked."""
  out = []
  for start in range(0, len(rows), batch_size):
    chunk = list(rows[start:start + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)  # One compiled shape.
    out.append(np.asarray(fn(chunk))[:n])
  return np.concatenate(out) if out else np.zeros((0,))


class EnsembleEvaluator:
  """Evaluates M member prompts of one model in one pass over replicated examples.

  Args:
    config: the frozen model's `T5Config`.
    frozen: its parameters (no `prompt`).
    members: [M, P, D] (or [M, K, P, D]) member prompts.
    tasks: the tasks to evaluate (K of them when the members are [K, P, D] exports).
    feature_lengths: {"inputs": L, "targets": T}.
    batch_size: replicated rows per model call (BATCH_SIZE / M examples per batch).
    mode: "generation" or "rank_classification".
    vote: "majority" or "loglik" (module doc).
    placement: the prompts' placement.
    examples: {task: examples}; None loads `split` (at most `max_examples`).
    task_ids: task -> its id in the members' [K, P, D] exports (default: index in `tasks`).
    with_metrics: False for inference (e.g. a test split without labels): predictions and
      the vote only, no metrics.
  """

  def __init__(self, config: Any, frozen: Any, members: np.ndarray, tasks: Sequence[str], *,
               feature_lengths: Mapping[str, int], batch_size: int = 32,
               mode: str = "generation", vote: str = "majority", placement: str = "prefix",
               split: str = "validation", max_examples: int | None = None,
               examples: Mapping[str, Sequence[Example]] | None = None,
               task_ids: Mapping[str, int] | None = None, with_metrics: bool = True,
               mesh: jax.sharding.Mesh | None = None):
    from prompt_jax.models.t5 import T5Transformer
    evaluation.check_mode(mode)
    check_vote(vote)
    self.num_members = members.shape[0]
    self.tasks_per_member = members.shape[1] if members.ndim == 4 else 1
    module, self.trainable = bank(members, placement)
    self.adapter = adapter_lib.ModelAdapter(T5Transformer(config, prompt=module))
    self.mesh = mesh
    self.params = evaluation.put_params(frozen, self.trainable, mesh)
    self.mode, self.vote, self.batch_size = mode, vote, batch_size
    self.with_metrics = with_metrics
    self.lengths = dict(feature_lengths)
    self.task_ids = dict(task_ids) if task_ids is not None else {t: i for i, t in
                                                                 enumerate(tasks)}
    self.examples = ({t: list(examples[t]) for t in tasks} if examples is not None else
                     {t: evaluation.load_examples(t, split, feature_lengths=self.lengths,
                                                  max_examples=max_examples) for t in tasks})

  def _ids(self, task: str) -> np.ndarray:
    return row_ids(len(self.examples[task]), self.num_members, self.task_ids[task],
                   self.tasks_per_member)

  def _put(self, rows: np.ndarray):
    return evaluation.put_rows(rows, self.mesh)

  def _score_rows(self, rows: Sequence[tuple[np.ndarray, Sequence[int], int]]) -> np.ndarray:
    """Log-likelihoods [R] of (inputs, target ids, bank row) rows."""
    if not rows:
      return np.zeros((0,), np.float64)
    score = evaluation.jitted_score(self.adapter, self.mesh)
    target_length = max(len(t) for _, t, _ in rows)

    def fn(chunk):
      x = evaluation._pad([r[0] for r in chunk], self.lengths["inputs"])
      y = evaluation._pad([r[1] for r in chunk], target_length)
      ids = np.asarray([r[2] for r in chunk], np.int32)
      return score(self.params, self._put(x), self._put(y), task_ids=self._put(ids))

    return _batched(fn, rows, self.batch_size).astype(np.float64)

  def predict_tokens(self, task: str) -> np.ndarray:
    """Greedy tokens of every member in one pass: [M, E, T]."""
    exs, m = self.examples[task], self.num_members
    decode = evaluation.jitted_predict(
        self.adapter, self.lengths["targets"], self.mesh)
    copies = [ex for ex in exs for _ in range(m)]  # Row e * M + m: example e, member m.
    rows = [(ex["inputs"], int(i)) for ex, i in zip(copies, self._ids(task))]

    def fn(chunk):
      x = evaluation._pad([r[0] for r in chunk], self.lengths["inputs"])
      ids = np.asarray([r[1] for r in chunk], np.int32)
      return decode(self.params, self._put(x), task_ids=self._put(ids))

    tokens = _batched(fn, rows, self.batch_size)  # [E * M, T]
    return tokens.reshape(len(exs), m, -1).transpose(1, 0, 2)

  def label_scores(self, task: str, labels: Sequence[str]) -> np.ndarray:
    """Every label's log-likelihood under every member, in one pass: [M, E, C]."""
    vocab = evaluation.get_task(task).output_features["targets"].vocabulary
    label_ids = [list(vocab.encode(label)) + [vocab.eos_id] for label in labels]
    exs, m = self.examples[task], self.num_members
    ids = self._ids(task)
    rows = [(exs[r // m]["inputs"], label_ids[c], int(ids[r]))
            for r in range(len(exs) * m) for c in range(len(labels))]
    return self._score_rows(rows).reshape(len(exs), m, len(labels)).transpose(1, 0, 2)

  def _result(self, task: str, predictions: Sequence[str]) -> EvalResult:
    if not self.with_metrics:
      return EvalResult({}, list(predictions), [])
    return evaluation.score_predictions(task, self.examples[task], predictions)

  def _member_results(self, task: str, predictions: Sequence[Sequence[str]]
                      ) -> list[EvalResult]:
    return [self._result(task, p) for p in predictions]

  def evaluate_task(self, task: str) -> EnsembleResult:
    """Members' and ensemble's results for one task."""
    if self.mode == "rank_classification":
      return self._rank(task)
    return self._generate(task)

  def _rank(self, task: str) -> EnsembleResult:
    labels = evaluation.task_labels(task)
    if not labels:
      raise ValueError(f"Task {task!r} declares no label strings; evaluate it in "
                       "generation mode.")
    scores = self.label_scores(task, labels)  # [M, E, C]
    members = self._member_results(task, [[labels[j] for j in np.argmax(s, axis=1)]
                                          for s in scores])
    for r, s in zip(members, scores):
      r.scores = s
    chosen = vote_labels(scores, self.vote)
    ensemble = self._result(task, [labels[j] for j in chosen])
    ensemble.scores = scores.sum(axis=0)
    return EnsembleResult(members, ensemble)

  def _generate(self, task: str) -> EnsembleResult:
    exs = self.examples[task]
    t = evaluation.get_task(task)
    vocab = t.output_features["targets"].vocabulary
    tokens = self.predict_tokens(task)  # [M, E, T]
    raw = [evaluation.decode_targets(tok, vocab) for tok in tokens]
    keys = [[vote_key(t.postprocess_fn(p, example=ex, is_target=False))
             for p, ex in zip(preds, exs)] for preds in raw]
    summed = self._summed_loglik(task, tokens, candidates_to_score(keys, self.vote))
    winners = vote_generation(keys, summed, self.vote)
    ensemble = self._result(task, [raw[w][e] for e, w in enumerate(winners)])
    return EnsembleResult(self._member_results(task, raw), ensemble, winners)

  def _summed_loglik(self, task: str, tokens: np.ndarray, candidates: Sequence[Sequence[int]]
                     ) -> dict[tuple[int, int], float]:
    """{(e, m): member m's prediction on e scored under all members, summed}."""
    exs, m_all = self.examples[task], self.num_members
    base = self.task_ids[task]
    keys, rows = [], []
    for e, cands in enumerate(candidates):
      for m in cands:
        target = tokens[m, e].tolist()  # EOS kept, then 0: scoring skips the padding.
        for scorer in range(m_all):
          keys.append((e, m))
          rows.append((exs[e]["inputs"], target,
                       scorer * self.tasks_per_member + base))
    summed: dict[tuple[int, int], float] = {}
    for key, value in zip(keys, self._score_rows(rows)):
      summed[key] = summed.get(key, 0.0) + float(value)
    return summed

  def __call__(self, model_dir: str | None = None, step: int | str = "eval"
               ) -> tuple[dict[str, float], dict[str, EnsembleResult]]:
    """Flat `<task>/...` metrics of every task (and the inference JSONL per task)."""
    metrics, results = {}, {}
    for task in self.examples:
      result = results[task] = self.evaluate_task(task)
      metrics.update({f"{task}/{k}": float(v) for k, v in result.metrics().items()})
      if model_dir is not None and multihost.is_primary():
        write_inference(model_dir, task, step, self.examples[task], result)
    return metrics, results


def write_inference(model_dir: str, task: str, step: int | str,
                    examples: Sequence[Example], result: EnsembleResult) -> pathlib.Path:
  """The usual JSONL (the ensemble's `prediction`) plus `members`: every member's prediction."""
  extras = [{"members": [r.predictions[e] for r in result.members]}
            for e in range(len(examples))]
  if result.winners is not None:
    for extra, w in zip(extras, result.winners):
      extra["vote_member"] = int(w)
  return evaluation.write_inference(model_dir, task, step, examples,
                                    result.ensemble.predictions, extras=extras)
