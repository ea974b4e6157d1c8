"""A tiny VQ-VAE run for tests/test_faults.py, in its own process (8 CPU devices, as in the tests).

    python tests/_fault_worker.py WORKDIR IDX_DIR STEPS [--kill-at-save STEP]

``--kill-at-save STEP`` kills the process with SIGKILL while the checkpoint of STEP is being written:
its files are all in Orbax's temporary directory, which has not yet been renamed to ``STEP``.
"""

import os
import signal
import sys

import jax
from orbax.checkpoint._src.path import atomicity

from experiments import vqvae_mnist
from vqjax import training


def tiny_config(idx_dir: str, steps: int):
    c = vqvae_mnist.get_config()
    c.model.update(hidden=8, residual_hidden=4, num_residual=1)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4)
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.train.update(steps=steps, log_every=1, checkpoint_every=3, eval_every=0)
    return c


def main(argv):
    jax.config.update("jax_num_cpu_devices", 8)
    workdir, idx_dir, steps = argv[1], argv[2], int(argv[3])
    if "--kill-at-save" in argv:
        kill_step = argv[argv.index("--kill-at-save") + 1]
        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        def finalize_or_die(self, *args, **kwargs):
            tmp = os.fspath(self.get())
            if os.path.basename(tmp).startswith(f"{kill_step}.orbax-checkpoint-tmp"):
                print(f"killing at the save of step {kill_step}: {tmp}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return finalize(self, *args, **kwargs)

        atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
    config = tiny_config(idx_dir, steps)
    training.train_and_evaluate(config, workdir, vqvae_mnist.build(config))


if __name__ == "__main__":
    main(sys.argv)
