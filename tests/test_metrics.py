import numpy as np

from rd_jax import metrics


def test_metrics_match_hand_computation(tmp_path):
  labels = ["A", "B", "C"]
  y_true = [0, 0, 1, 1, 2, 2]
  y_pred = [0, 1, 1, 1, 0, 2]
  m = metrics.classification_metrics(y_true, y_pred, labels)
  # A: P=1/2 R=1/2 F1=1/2; B: P=2/3 R=1 F1=0.8; C: P=1 R=1/2 F1=2/3
  np.testing.assert_allclose(m["macro_f1"], (0.5 + 0.8 + 2 / 3) / 3, rtol=1e-9)
  np.testing.assert_allclose(m["accuracy"], 4 / 6)
  assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
  assert m["per_class"]["B"]["support"] == 2
  png = tmp_path / "c.png"
  metrics.save_confusion_png(m, str(png))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_absent_class_not_counted_in_macro_f1():
  m = metrics.classification_metrics([0, 1], [0, 1], ["A", "B", "C"])
  assert m["macro_f1"] == 1.0


def test_class_ids_outside_the_labels_are_an_error():
  import pytest
  with pytest.raises(ValueError, match="y_true has 1 class ids outside"):
    metrics.classification_metrics([0, -1], [0, 0], ["a", "b"])   # -1 = "no label"
  with pytest.raises(ValueError, match="y_pred"):
    metrics.classification_metrics([0, 1], [0, 2], ["a", "b"])
