"""JAX's persistent compilation cache: a rerun (a resume, a finished run that only evaluates, the
next run of a sweep) loads its compiled programs from disk instead of compiling them again."""

from __future__ import annotations

import os

import jax

ENV = "VQJAX_COMPILATION_CACHE"


def default_cache_dir() -> str:
    """``$VQJAX_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/vqjax/jax`` (``~/.cache/vqjax/jax``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get(ENV) or os.path.join(base, "vqjax", "jax")


def use_compilation_cache(directory: str | None = None, *, min_compile_seconds: float = 0.0) -> str | None:
    """Turn on JAX's persistent compilation cache in ``directory`` (default :func:`default_cache_dir`);
    the directory used, or None when it is off.

    ``VQJAX_COMPILATION_CACHE=off`` turns it off; a cache directory the user already gave JAX
    (``JAX_COMPILATION_CACHE_DIR``) is kept. Programs that took at least ``min_compile_seconds`` to
    compile are stored (0: all of them; a step of a small model compiles in under a second on CPU).
    Entries are keyed by the program, the JAX/XLA version and the devices, so a stale entry is never
    used; delete the directory to reclaim the space.
    """
    if os.environ.get(ENV, "").lower() in ("off", "0", "false", "none"):
        return None
    directory = jax.config.jax_compilation_cache_dir or directory or default_cache_dir()
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
