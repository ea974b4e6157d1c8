"""``python -m experiments.sweep`` as one process of a multi-process job, for ``tests/test_multihost.py``.

    python tests/_multihost_worker.py --config=experiments/vqvae_mnist.py --sweep=... --workdir=...

The same as the CLI, except that every file this process opens for writing, and every rename
target, is appended (one absolute path a line, as it happens, so a killed process leaves its list)
to the file named by ``VQJAX_TEST_WRITES``. The test checks with it that only process 0 writes
summaries, metrics and pictures. Files written by C++ (Orbax's TensorStore arrays) are not seen.
"""

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _record_writes(log_path: str) -> None:
    log = open(log_path, "a", buffering=1)  # opened before the hook: its writes are not events

    def path_of(p):
        return os.path.abspath(os.fsdecode(p))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            writing = (isinstance(flags, int) and flags & _WRITE_FLAGS) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing:
                log.write(path_of(path) + "\n")
        elif event == "os.rename":  # os.rename and os.replace
            log.write(path_of(args[1]) + "\n")

    sys.addaudithook(hook)


def main() -> None:
    if os.environ.get("VQJAX_TEST_WRITES"):
        _record_writes(os.environ["VQJAX_TEST_WRITES"])
    sys.path[0] = ROOT  # as `python -m` from the repository root
    sys.argv = [os.path.join(ROOT, "experiments", "sweep.py"), *sys.argv[1:]]
    runpy.run_module("experiments.sweep", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
