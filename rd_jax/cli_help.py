"""`--help` for the command-line programs: what to type, the common overrides, exit codes; exit 0.

absl's own `--help` exits with status 1 and lists every flag of every imported library; this
answers `--help`, `-h` and `--helpshort` first (absl's `--helpfull` still lists everything).
"""

from __future__ import annotations

import sys

COMMON_OVERRIDES = """\
Common overrides (any key of rd_jax/config.py works the same way):
  --config.data.path=my_pairs.csv          your pairs file (JSONL / CSV / Parquet; "" = bundled ESCI)
  --config.labels=1,2,3,4                  your label set, class-id order (or a file: one per line)
  --config.student.cross_query_negative_label=1   your label for an unrelated item (configs/demo.py
                                           labels items of other queries: ESCI's "Irrelevant")
  --config.data.split=0.8,0.1,0.1          train/valid/test shares of a file without query_fold
  --config.data.on_bad_row=skip            count and skip bad rows instead of stopping
  --config.data.reasoning_source=rules     reasoning without a teacher run
  --config.train.num_steps=200             training length (crsd, baseline)
  --config.eval.split=valid                evaluate valid instead of test
  --config.eval.checkpoint=DIR             evaluate another student's final/ folder
  --config.calibrate.path=FILE             --stage=calibrate: re-fit the student's decision rule on a
                                           labelled sample of your traffic (its label mix)
  --debug                                  show the traceback of a user error
"""

EXIT_CODES = """\
Exit codes: 0 ok; 1 internal error (a bug); 2 config or flag mistake; 3 data (malformed, empty or
unusable file or split); 4 path or checkpoint; 5 conflict with the workdir (another run holds the
stage, or it was trained with other values).
"""

_HELP_FLAGS = ("--help", "-h", "--helpshort", "-?", "--help=true")


def maybe_print_help(doc: str, program: str, *, common: bool = True, argv=None) -> None:
  """Prints `doc` (+ the common overrides and exit codes) and exits 0 if help was asked for."""
  argv = sys.argv if argv is None else argv
  if not any(a in _HELP_FLAGS for a in argv[1:]):
    return
  print(f"usage: python -m {program} [flags]\n")
  print((doc or "").strip() + "\n")
  if common:
    print(COMMON_OVERRIDES)
  print(EXIT_CODES)
  print("All flags (and every library's): --helpfull")
  sys.exit(0)
