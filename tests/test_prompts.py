"""Teacher prompt, SFT target and response parser (no JAX, no model)."""

import sys

import numpy as np
import pytest

from rd_jax.data import prompts

LABELS = ["Exact", "Substitute", "Complement", "Irrelevant"]


@pytest.mark.parametrize("text,label,reasoning", [
    ("The item is red running shoes.\nLabel: Exact", "Exact", "The item is red running shoes."),
    ("A sock.\n\nlabel:complement.\n\n", "Complement", "A sock."),
    ("Line one.\nLine two.\n  LABEL :  substitute  ", "Substitute", "Line one.\nLine two."),
    ("Label: Irrelevant", "Irrelevant", ""),
])
def test_parse_good(text, label, reasoning):
  assert prompts.parse_response(text, LABELS) == (label, reasoning, None)


@pytest.mark.parametrize("text,error", [
    ("", "empty"),
    ("  \n ", "empty"),
    ("It matches.", "no label line"),
    ("Label: Exact\nbecause it matches", "no label line"),
    ("**Label:** Exact", "no label line"),
    ("It is shoes.\nLabel: foo", "unknown label 'foo'"),
    ("Label: Exact match", "unknown label 'Exact match'"),
])
def test_parse_malformed(text, error):
  label, _, got = prompts.parse_response(text, LABELS)
  assert label is None and got == error


def test_parse_truncated_even_if_last_line_looks_fine():
  parsed = prompts.parse_response("Reasoning that was cut\nLabel: Exact", LABELS, finished=False)
  assert parsed == (None, "Reasoning that was cut\nLabel: Exact", "truncated")


def test_parse_custom_labels():
  assert prompts.parse_response("ok\nLabel: yes", ["Yes", "No"]).label == "Yes"
  assert prompts.parse_response("ok\nLabel: Exact", ["Yes", "No"]).error == "unknown label 'Exact'"


def test_sft_target_round_trips_through_parser():
  target = prompts.build_sft_target("  The brand differs.\n", "Substitute")
  assert target == "The brand differs.\nLabel: Substitute"
  assert prompts.parse_response(target, LABELS) == ("Substitute", "The brand differs.", None)
  assert prompts.build_sft_target("", "Exact") == "Label: Exact"


class _ChatTokenizer:
  chat_template = "chatml"

  def apply_chat_template(self, messages, tokenize, add_generation_prompt):
    assert not tokenize and add_generation_prompt
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n"


def test_prompt_v1_has_query_item_labels_and_definitions():
  text = prompts.build_prompt(_ChatTokenizer(), " red shoes ", "Nike Pegasus\nBrand: Nike", LABELS, version=1)
  assert "Query: red shoes\n" in text and "Nike Pegasus\nBrand: Nike" in text
  for label in LABELS:
    assert f"- {label}: {prompts.ESCI_DEFINITIONS[label]}" in text
  assert "Label: <Exact | Substitute | Complement | Irrelevant>" in text
  assert text.endswith("<|im_start|>assistant\n")


def test_prompt_v2_shares_a_prefix_and_names_no_label_in_the_format():
  tok = _ChatTokenizer()
  a = prompts.build_prompt(tok, "red shoes", "Nike Pegasus", LABELS)
  b = prompts.build_prompt(tok, "usb c charger", "Anker 735", LABELS)
  shared = a[:next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)]
  for label in LABELS:   # every definition, and the answer format, precede the query
    assert f"- {label}: {prompts.ESCI_DEFINITIONS_V2[label]}" in shared
  assert "satisfies ALL" in prompts.ESCI_DEFINITIONS_V2["Exact"]
  assert shared.rstrip().endswith("Query:") and "Label: <label>" in shared
  assert a.endswith("Nike Pegasus<|im_end|>\n<|im_start|>assistant\n")
  shuffled = prompts.build_prompt(tok, "red shoes", "Nike Pegasus", LABELS, order=[3, 1, 0, 2])
  starts = [shuffled.index(f"- {l}:") for l in LABELS]
  assert np.argsort(starts).tolist() == [3, 1, 0, 2]
  with pytest.raises(ValueError, match="permutation"):
    prompts.build_prompt(tok, "q", "i", LABELS, order=[0, 0, 1, 2])
  with pytest.raises(ValueError, match="prompt version"):
    prompts.build_messages("q", "i", LABELS, version=3)
  custom = prompts.build_messages("q", "item", ["Yes", "No"])[1]["content"]
  assert "- Yes\n- No" in custom


def test_no_chat_template_is_an_error():
  class Plain:
    chat_template = None
  with pytest.raises(ValueError, match="no chat template"):
    prompts.build_prompt(Plain(), "q", "item", LABELS)


def test_prompts_does_not_import_jax():
  import subprocess
  code = "import sys, rd_jax.data.prompts; print('jax' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
