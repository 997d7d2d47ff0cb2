"""Teacher prompt, SFT target and response parser (no JAX, no model)."""

import sys

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


def test_prompt_has_query_item_labels_and_definitions():
  text = prompts.build_prompt(_ChatTokenizer(), " red shoes ", "Nike Pegasus\nBrand: Nike", LABELS)
  assert "Query: red shoes\n" in text and "Nike Pegasus\nBrand: Nike" in text
  for label in LABELS:
    assert f"- {label}: {prompts.ESCI_DEFINITIONS[label]}" in text
  assert "Label: <Exact | Substitute | Complement | Irrelevant>" in text
  assert text.endswith("<|im_start|>assistant\n")
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
