"""Tests for the skill gym: skill functions, generation, splits, SeqIO tasks and mixtures."""

import numpy as np
import pytest
import seqio

from prompt_jax.data import skill_gym as gym

# (skill, input, expected output), written by hand. Every family appears at least once.
HAND = [
    ("copy", "abc", "abc"),
    ("reverse", "abcd", "dcba"),
    ("sort", "dbca", "abcd"),
    ("sortdesc", "dbca", "dcba"),
    ("atbash", "abz", "zya"),
    ("upper", "abz", "ABZ"),
    ("dropvowels", "banana", "bnn"),
    ("keepvowels", "banana", "aaa"),
    ("dedupe", "abcabd", "abcd"),
    ("squeeze", "aabbba", "aba"),
    ("firsthalf", "abcde", "abc"),
    ("secondhalf", "abcde", "de"),
    ("evens", "abcdef", "ace"),
    ("odds", "abcdef", "bdf"),
    ("swappairs", "abcde", "badce"),
    ("double", "abc", "aabbcc"),
    ("mirror", "abc", "abccba"),
    ("twice", "abc", "abcabc"),
    ("min", "dbcz", "b"),
    ("max", "dbca", "d"),
    ("length", "abcdefg", "7"),
    ("shift_1", "abz", "bca"),
    ("shift_3", "xyz", "abc"),
    ("shift_25", "abc", "zab"),
    ("revshift_1", "abz", "acb"),
    ("pshift_1", "aaaz", "bcdd"),
    ("rotl_1", "abcd", "bcda"),
    ("rotl_2", "abc", "cab"),
    ("rotr_1", "abcd", "dabc"),
    ("rotr_4", "abc", "cab"),
    ("first_2", "abcd", "ab"),
    ("last_3", "abcd", "bcd"),
    # The same skills over other alphabets (shift wraps at the alphabet's own end).
    ("greek_shift_1", "αβω", "βγα"),
    ("greek_sort", "γαβ", "αβγ"),
    ("greek_upper", "αβσ", "ΑΒΣ"),
    ("greek_atbash", "αω", "ωα"),
    ("greek_dropvowels", "αβγε", "βγ"),
    ("cyrillic_shift_2", "аяю", "вба"),
    ("cyrillic_reverse", "абв", "вба"),
    ("cyrillic_max", "бая", "я"),
]


@pytest.mark.parametrize("skill,text,expected", HAND)
def test_skill_on_hand_written_examples(skill, text, expected):
  assert gym.get_skill(skill)(text) == expected


def test_hand_examples_cover_every_family():
  covered = {gym.get_skill(name).family for name, _, _ in HAND}
  assert covered == set(gym.FAMILIES)


def test_skill_rejects_foreign_letters():
  with pytest.raises(ValueError, match="latin"):
    gym.get_skill("reverse")("αβ")
  with pytest.raises(ValueError):
    gym.get_skill("reverse")("")


def test_unknown_skill_names_the_families():
  with pytest.raises(KeyError, match="families: copy"):
    gym.get_skill("revers")


def test_skill_counts_words_and_alphabets():
  latin = gym.skill_names("latin")
  assert len(latin) >= 100  # IPT-style experiments need 100+ tasks.
  assert len(gym.skill_names("latin", family="shift")) == 25
  for alphabet in gym.ALPHABETS:
    words = [gym.get_skill(s).word for s in gym.skill_names(alphabet)]
    assert len(set(words)) == len(words), alphabet  # A word selects one skill.
    assert all(w.isascii() and w.isalnum() for w in words)
  # The same skill keeps its word in another script.
  assert gym.get_skill("greek_shift_3").word == gym.get_skill("shift_3").word == "shift3"
  assert set(gym.CORE_SKILLS) <= set(latin)


def test_examples_are_deterministic_and_prefix_stable():
  a = gym.examples("reverse", "train", 50, seed=0)
  assert a == gym.examples("reverse", "train", 50, seed=0)
  assert a[:10] == gym.examples("reverse", "train", 10, seed=0)
  assert a != gym.examples("reverse", "train", 50, seed=1)
  # The stream is seeded by the skill too: another skill sees other strings.
  strings = [e["inputs"].split()[1] for e in a]
  other = [e["inputs"].split()[1] for e in gym.examples("sort", "train", 50, seed=0)]
  assert strings != other


def test_examples_have_word_lengths_and_letters():
  skill = gym.get_skill("greek_shift_2")
  rows = gym.examples(skill, "validation", 200, min_len=2, max_len=5)
  lengths = set()
  for row in rows:
    word, text = row["inputs"].split(" ")
    assert word == "shift2"
    assert set(text) <= set(skill.alphabet.letters)
    assert row["targets"] == skill(text)
    lengths.add(len(text))
  assert lengths == {2, 3, 4, 5}
  bare = gym.examples(skill, "validation", 200, with_word=False, min_len=2, max_len=5)
  assert [r["inputs"] for r in bare] == [r["inputs"].split(" ")[1] for r in rows]
  assert [r["targets"] for r in bare] == [r["targets"] for r in rows]


def test_splits_are_disjoint_within_and_across_skills():
  seen = {}
  for split in gym.SPLITS:
    texts = {r["inputs"] for r in gym.examples("copy", split, 300, with_word=False)}
    texts |= {r["inputs"] for r in gym.examples("sort", split, 300, with_word=False)}
    assert all(gym.split_of(t) == split for t in texts)
    seen[split] = texts
  assert not seen["train"] & seen["test"]
  assert not seen["train"] & seen["validation"]
  assert not seen["validation"] & seen["test"]
  # Short strings collide often, so the split is really by string: none crosses over.
  short = gym.examples("reverse", "test", 2000, with_word=False, min_len=2, max_len=2)
  train = gym.examples("sort", "train", 2000, with_word=False, min_len=2, max_len=2)
  assert not {r["inputs"] for r in short} & {r["inputs"] for r in train}


def test_repeat_skills_get_inputs_with_repeats():
  rows = gym.examples("dedupe", "train", 200, with_word=False)
  changed = np.mean([r["targets"] != r["inputs"] for r in rows])
  assert changed > 0.7  # Uniform letters would leave most strings unchanged.


def test_examples_argument_errors():
  with pytest.raises(ValueError, match="split"):
    gym.examples("copy", "dev", 1)
  with pytest.raises(ValueError, match="min_len"):
    gym.examples("copy", "train", 1, min_len=5, max_len=3)


def test_vocab_size_constant():
  assert gym.VOCAB.vocab_size == 259
  assert gym.GYM_VOCAB_SIZE >= 259 and gym.GYM_VOCAB_SIZE % 8 == 0


def _first(task_name, n, split="test"):
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(None, split=split, shuffle=False)
  return list(ds.take(n).as_numpy_iterator())


@pytest.mark.parametrize("skill", ["reverse", "greek_sort"])
def test_task_tokens_decode_to_the_examples(skill):
  expected = gym.examples(skill, "test", 4, seed=gym.GymConfig().seed)
  got = _first(gym.task_name(skill), 4)
  for row, feats in zip(expected, got):
    for key in ("inputs", "targets"):
      ids = feats[key].tolist()
      assert ids[-1] == 1 and 1 not in ids[:-1]  # One EOS, at the end.
      assert max(ids) < gym.VOCAB.vocab_size
      assert gym.VOCAB.decode(ids[:-1]) == row[key]
      assert feats[f"{key}_pretokenized"].decode("utf-8") == row[key]


def test_noword_task_lacks_the_word():
  with_word = _first("skill_gym_shift_1", 5, split="validation")
  bare = _first("skill_gym_shift_1_noword", 5, split="validation")
  for w, b in zip(with_word, bare):
    assert w["inputs_pretokenized"] == b"shift1 " + b["inputs_pretokenized"]
    assert not b["inputs_pretokenized"].startswith(b"shift1")
    np.testing.assert_array_equal(w["targets"], b["targets"])


def test_mixtures_list_their_skills():
  mix = seqio.get_mixture_or_task(gym.MIXTURE_NAME)
  assert sorted(t.name for t in mix.tasks) == sorted(f"skill_gym_{s}" for s in gym.CORE_SKILLS)
  everything = seqio.get_mixture_or_task("skill_gym_all")
  assert len(everything.tasks) == len(gym.skill_names("latin"))
  greek = seqio.get_mixture_or_task("skill_gym_greek_all")
  assert all(t.name.startswith("skill_gym_greek_") for t in greek.tasks)


def test_register_is_idempotent_and_replaces_on_new_config():
  before = seqio.TaskRegistry.get("skill_gym_copy")
  names = gym.register_skill_gym()
  assert seqio.TaskRegistry.get("skill_gym_copy") is before
  assert "skill_gym_copy" in names and "skill_gym_copy_noword" in names
  small = gym.GymConfig(test_examples=3)
  try:
    gym.register_skill_gym(["copy"], small, mixture_skills=["copy"], mixture_name="gym_test_mix")
    task = seqio.TaskRegistry.get("skill_gym_copy")
    assert task is not before
    assert task.num_input_examples("test") == 3
    assert [t.name for t in seqio.get_mixture_or_task("gym_test_mix").tasks] == ["skill_gym_copy"]
  finally:
    seqio.MixtureRegistry.remove("gym_test_mix")
    gym.register_skill_gym()
  assert seqio.TaskRegistry.get("skill_gym_copy").num_input_examples("test") == 500


def test_feature_lengths_bound_every_example():
  skills = ["double", "greek_mirror", "cyrillic_dropvowels", "length"]
  lengths = gym.feature_lengths(skills, max_len=8)
  for skill in skills:
    for row in gym.examples(skill, "train", 100):
      assert len(gym.VOCAB.encode(row["inputs"])) + 1 <= lengths["inputs"]
      assert len(gym.VOCAB.encode(row["targets"])) + 1 <= lengths["targets"]
  assert lengths["targets"] == 2 * 8 * 2 + 1  # greek_mirror at full length.


def test_metric_and_postprocessor():
  assert gym.strip_postprocessor(b" abc \n") == "abc"
  assert gym.strip_postprocessor(" abc", is_target=True) == "abc"
  assert gym.exact_match(["ab", "cd"], ["ab", "dc"]) == {"exact_match": 50.0}
  task = seqio.get_mixture_or_task("skill_gym_reverse")
  assert task.postprocess_fn(" cba ") == "cba"
  with pytest.raises(ValueError):
    gym.exact_match(["a"], [])
