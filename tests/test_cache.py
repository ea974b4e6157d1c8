"""The persistent compilation cache the experiments turn on: where it goes, how to turn it off, and a
rerun that loads its programs from it."""

import os
import subprocess
import sys

import jax

from vqjax import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_directory_off_and_a_directory_jax_already_has(monkeypatch, tmp_path):
    monkeypatch.setenv("VQJAX_COMPILATION_CACHE", "off")
    assert training.use_compilation_cache() is None
    monkeypatch.setenv("VQJAX_COMPILATION_CACHE", str(tmp_path / "mine"))
    assert training.default_cache_dir() == str(tmp_path / "mine")
    # The suite gave JAX a cache directory (tests/conftest.py): a directory JAX already has is kept.
    assert training.use_compilation_cache() == jax.config.jax_compilation_cache_dir != str(tmp_path / "mine")
    monkeypatch.delenv("VQJAX_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert training.default_cache_dir() == str(tmp_path / "vqjax" / "jax")


def test_a_second_process_loads_the_programs_from_the_cache(tmp_path):
    """The same jitted program in two processes: the first writes it to the cache, the second hits it."""
    code = ("from vqjax import training; import jax, jax.numpy as jnp; training.use_compilation_cache(); "
            "hits = []; jax.monitoring.register_event_listener("
            "lambda e, **kw: hits.append(e) if e == '/jax/compilation_cache/cache_hits' else None); "
            "y = float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).sum()); print(y, len(hits))")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(VQJAX_COMPILATION_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    first = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    entries = sorted(os.listdir(tmp_path / "cache"))
    assert entries
    second = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    value, hits = first.stdout.split()
    assert hits == "0"
    value2, hits2 = second.stdout.split()
    assert value2 == value and int(hits2) >= 1 and sorted(os.listdir(tmp_path / "cache")) == entries
