"""cli_setup: the mapping-limit warning that names its fix before a long CPU run."""

from rd_jax import cli_setup


def test_max_map_count_warning_names_the_limit_and_the_fix(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  low = tmp_path / "low"
  low.write_text("65530\n")
  warning = cli_setup.max_map_count_warning(str(low))
  assert "65530" in warning and str(low) in warning
  assert f"vm.max_map_count={cli_setup.RECOMMENDED_MAX_MAP_COUNT}" in warning
  enough = tmp_path / "enough"
  enough.write_text(f"{cli_setup.RECOMMENDED_MAX_MAP_COUNT}\n")
  assert cli_setup.max_map_count_warning(str(enough)) is None
  assert cli_setup.max_map_count_warning(str(tmp_path / "absent")) is None   # not Linux
  garbled = tmp_path / "garbled"
  garbled.write_text("many")
  assert cli_setup.max_map_count_warning(str(garbled)) is None
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")   # an accelerator run: not this limit's problem
  assert cli_setup.max_map_count_warning(str(low)) is None


def test_the_warning_leaves_the_jax_backend_uninitialised():
  """jax.distributed.initialize must come before any backend use (tests/test_gcs_workdir.py)."""
  import subprocess
  import sys
  code = ("from rd_jax import cli_setup; cli_setup.max_map_count_warning(); "
          "from jax._src import xla_bridge; assert not xla_bridge.backends_are_initialized()")
  subprocess.run([sys.executable, "-c", code], check=True)
