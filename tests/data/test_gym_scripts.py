"""The gym's scripts (stand-ins for languages): bijections that skills commute with."""

import pytest

from prompt_jax.data import skill_gym as gym

from prompt_jax.data import gym_scripts as scripts


@pytest.mark.parametrize("name", sorted(scripts.SCRIPTS))
def test_script_mapping_is_a_bijection_of_the_latin_letters(name):
  sc = scripts.SCRIPTS[name]
  latin = gym.ALPHABETS["latin"].letters
  images = [sc.encode(c) for c in latin]
  assert len(set(images)) == 26 and all(len(x) == 1 for x in images)
  assert sc.decode(sc.encode(latin)) == latin
  assert sc.encode(sc.decode(sc.letters)) == sc.letters


def test_near_scripts_share_symbols_with_latin_and_distant_ones_share_none():
  latin = scripts.SCRIPTS[scripts.TRAIN_SCRIPT]
  shared = {n: sc.shared_with(latin) for n, sc in scripts.SCRIPTS.items()}
  assert shared == {"latin": 26, "near": 20, "half": 13, "upper": 0, "symbols": 0}
  assert {n for n, sc in scripts.SCRIPTS.items() if sc.distance == "distant"} == {"upper", "symbols"}
  # Distant scripts are disjoint from each other too.
  assert scripts.SCRIPTS["upper"].shared_with(scripts.SCRIPTS["symbols"]) == 0


@pytest.mark.parametrize("skill", scripts.SCRIPT_SKILLS)
def test_skills_commute_with_every_script(skill):
  base = gym.get_skill(skill)
  rows = gym.examples(skill, "train", 40, with_word=False)
  for name, sc in scripts.SCRIPTS.items():
    in_script = gym.Skill(f"{name}_{skill}", base.family, base.param, sc.alphabet, base.word)
    for r in rows:
      assert in_script(sc.encode(r["inputs"])) == sc.encode(r["targets"]), (name, r)


def test_script_examples_are_the_latin_strings_rewritten():
  latin = gym.examples("reverse", "test", 20, with_word=True)
  assert scripts.script_examples("reverse", "latin", "test", 20) == latin
  upper = scripts.script_examples("reverse", "upper", "test", 20, with_word=False)
  assert [r["inputs"] for r in upper] == [r["inputs"].split(" ", 1)[1].upper() for r in latin]
  assert all(gym.split_of(scripts.SCRIPTS["upper"].decode(r["inputs"])) == "test" for r in upper)
  with pytest.raises(ValueError, match="made of input letters"):
    scripts.script_examples("upper", "near", "test", 2)
  with pytest.raises(KeyError, match="Unknown script"):
    scripts.script_task_name("reverse", "klingon")


def test_register_scripts_builds_tasks_and_a_mixture():
  import seqio
  names = scripts.register_scripts(("reverse",), ("latin", "upper"),
                               gym.GymConfig(train_examples=16, validation_examples=4,
                                             test_examples=4),
                               mixture_name="test_scripts_mix")
  assert names == ["skill_gym_script_latin_reverse", "skill_gym_script_latin_reverse_noword",
                   "skill_gym_script_upper_reverse", "skill_gym_script_upper_reverse_noword"]
  mix = seqio.get_mixture_or_task("test_scripts_mix")
  assert sorted(t.name for t in mix.tasks) == [names[0], names[2]]
  ds = seqio.get_mixture_or_task(names[3]).get_dataset(None, split="test", shuffle=False)
  rows = list(ds.as_numpy_iterator())
  assert len(rows) == 4
  assert rows[0]["targets_pretokenized"].decode() == rows[0]["inputs_pretokenized"].decode()[::-1]
  assert rows[0]["inputs_pretokenized"].decode().isupper()
  lengths = scripts.script_feature_lengths(["reverse"], ["latin", "half"], max_len=8)
  assert lengths == {"inputs": len("reverse") + 1 + 16 + 1, "targets": 17}


@pytest.fixture
def restore_gym():
  """The backbone build registers the demo mixture with other tasks; put the defaults back."""
  yield
  gym.register_skill_gym()


@pytest.mark.slow
def test_a_backbone_model_tuned_on_two_scripts_evaluates_both(tmp_path, restore_gym):
  from prompt_jax.studies import gym_scripts
  study = gym_scripts.GymStudy(skills=("copy",), scripts=("latin", "upper"), train_steps=300,
                               train_examples=2000, max_len=5, cache_dir=str(tmp_path))
  backbone = gym_scripts.prepare(study, log=lambda _: None)
  assert backbone.parent == tmp_path and (backbone / "model.safetensors").is_file()
  scores = gym_scripts.backbone_reference(study, backbone, "copy", n=64)
  assert set(scores) == {"latin", "upper"}
  # Both scripts were learned (copy is easy); the distant one has no symbol in common.
  assert min(scores.values()) >= 50.0, scores
