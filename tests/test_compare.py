"""experiments.compare: two recipes' predictions files, paired over the split's queries."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from rd_jax import bootstrap, metrics
from rd_jax.experiments import compare

LABELS = ["Exact", "Substitute", "Complement", "Irrelevant"]


def _write(path, gold, pred, queries):
  with open(path, "w") as f:
    for i, (g, p) in enumerate(zip(gold, pred)):
      f.write(json.dumps({"query_id": queries[i], "product_id": f"p{i}", "label": LABELS[g],
                          "prediction": LABELS[p]}) + "\n")
  return str(path)


@pytest.fixture
def files(tmp_path):
  rng = np.random.default_rng(0)
  n = 40
  queries = [f"q{i // 5}" for i in range(n)]
  gold = rng.integers(0, 4, n)
  good = [np.where(rng.random(n) < 0.8, gold, rng.integers(0, 4, n)) for _ in range(2)]
  bad = [rng.integers(0, 4, n) for _ in range(2)]
  a = [_write(tmp_path / f"a{k}.jsonl", gold, p, queries) for k, p in enumerate(good)]
  b = [_write(tmp_path / f"b{k}.jsonl", gold, p, queries) for k, p in enumerate(bad)]
  return a, b, gold, good, bad, queries


def test_the_seed_means_and_their_interval_are_the_bootstraps(files):
  a, b, gold, good, bad, queries = files
  out = compare.compare(a, b, resamples=300, seed=2)
  f1 = lambda p: metrics.classification_metrics(gold, p, LABELS)["macro_f1"]
  assert out["per_file_macro_f1"][a[0]] == pytest.approx(f1(good[0]))
  assert out["macro_f1"]["delta"] == pytest.approx(np.mean([f1(p) for p in good])
                                                   - np.mean([f1(p) for p in bad]))
  direct = bootstrap.paired_query_bootstrap(queries, gold, np.stack(good), np.stack(bad), 4,
                                            resamples=300, seed=2)
  assert out["macro_f1"]["ci95"] == pytest.approx(direct["macro_f1"]["ci95"])
  assert out["macro_f1"]["ci95"][0] > 0 and out["queries"] == 8 and out["pairs"] == 40


def test_files_of_other_pairs_or_other_gold_are_refused_by_name(files, tmp_path):
  a, b, gold, good, bad, queries = files
  short = _write(tmp_path / "short.jsonl", gold[:-1], bad[0][:-1], queries)
  with pytest.raises(ValueError, match=r"short\.jsonl does not hold the pairs .* 1 missing"):
    compare.compare(a, [short])
  flipped = gold.copy()
  flipped[3] = (flipped[3] + 1) % 4
  other = _write(tmp_path / "other_gold.jsonl", flipped, bad[0], queries)
  with pytest.raises(ValueError, match=r"other_gold\.jsonl: gold label of query_id q0, product_id p3"):
    compare.compare(a, [other])
  broken = tmp_path / "broken.jsonl"
  broken.write_text('{"query_id": "q0", "product_id": "p0", "label": "Exact", "prediction": "Exact"}\n{"query_id": "q0"}\n')
  with pytest.raises(ValueError, match=r"broken\.jsonl:2: not a predictions row"):
    compare.compare([str(broken)], b)


def test_the_command_prints_each_file_and_the_paired_line(files, tmp_path):
  a, b, *_ = files
  out = tmp_path / "cmp.json"
  r = subprocess.run([sys.executable, "-m", "rd_jax.experiments.compare", f"--a={','.join(a)}",
                      f"--b={','.join(b)}", "--resamples=200", f"--out={out}"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "A (2 files) - B (2 files), macro_f1: +" in r.stdout and a[0] in r.stdout
  assert json.load(open(out))["resamples"] == 200
  r = subprocess.run([sys.executable, "-m", "rd_jax.experiments.compare", f"--a={a[0]}",
                      f"--b={tmp_path / 'absent.jsonl'}"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode != 0 and "no predictions file at" in r.stderr
  broken = tmp_path / "broken.jsonl"        # a bad file: one message and the data exit code
  broken.write_text('{"query_id": "q0"}\n')
  r = subprocess.run([sys.executable, "-m", "rd_jax.experiments.compare", f"--a={a[0]}",
                      f"--b={broken}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert (r.returncode, "Traceback" in r.stderr) == (3, False), r.stderr[-2000:]
  assert "broken.jsonl:1: not a predictions row" in r.stderr
