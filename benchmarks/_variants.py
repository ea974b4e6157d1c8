"""Workers for the codebook variants of ``quantizer.py``: EMA VQ (with and without dead-code restarts),
FSQ and residual VQ, vqjax against vector-quantize-pytorch's ``VectorQuantize``, ``FSQ`` and ``ResidualVQ``.

One call = one training step of the quantizer alone, forward + backward + codebook update, on
``z [N, D]`` float32 ~ N(0, 1), with a linear "decoder" term ``sum(z_q · w) / N`` so that the
straight-through path is in the backward:

* ``ema``: nearest code, commitment loss (β = 0.25), gradient w.r.t. z, EMA update (γ = 0.99) of
  K codes. vqjax: ``quantize`` + ``commitment_loss`` + ``ema_update``, one ``jax.jit``, state donated.
  Peer: ``VectorQuantize(dim, K, decay=0.99, commitment_weight=0.25, rotation_trick=False)`` in train
  mode (its EMA update runs in the forward), ``loss.backward()``.
* ``ema_restart``: the same plus dead-code restarts, threshold 1 vector per batch (vqjax
  ``restart_dead_codes``; peer ``threshold_ema_dead_code=1``).
* ``fsq``: levels (8, 5, 5, 5), D = 4: vqjax ``fsq`` vs peer ``FSQ(levels)``; no codebook.
* ``residual``: S = 4 stages of K codes on successive residuals, per-stage commitment losses,
  per-stage EMA updates (vmapped in vqjax). Peer: ``ResidualVQ(dim, num_quantizers=4, codebook_size=K,
  decay=0.99, commitment_weight=0.25, rotation_trick=False)``.
"""

from __future__ import annotations

import numpy as np

BETA, DECAY, THRESHOLD, TORCH_THREADS = 0.25, 0.99, 1.0, 2
FSQ_LEVELS = (8, 5, 5, 5)
STAGES = 4

# case -> (label, default shape N×K×D); FSQ's K is its implied codebook size, D = len(levels).
CASES = {
    "ema": ("EMA VQ", (65536, 1024, 64)),
    "ema_restart": ("EMA VQ + dead-code restarts", (65536, 1024, 64)),
    "fsq": (f"FSQ {FSQ_LEVELS}", (262144, int(np.prod(FSQ_LEVELS)), len(FSQ_LEVELS))),
    "residual": (f"residual VQ, {STAGES} EMA stages", (65536, 1024, 64)),
}
QUICK = {"ema": (1024, 64, 16), "ema_restart": (1024, 64, 16), "fsq": (1024, 1000, 4),
         "residual": (1024, 64, 16)}  # --quick: a smoke run of the harness


def inputs(n: int, k: int, d: int):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, d), dtype=np.float32)
    codebooks = rng.standard_normal((STAGES, k, d), dtype=np.float32)
    w = rng.standard_normal((d,), dtype=np.float32)
    return z, codebooks, w


# --------------------------------------------------------------------------- vqjax


def _vqjax_ema_step(restart: bool):
    import jax
    import jax.numpy as jnp

    from vqjax import losses, quantizers

    def step(state, z, w, key):
        def loss_fn(z):
            q = quantizers.quantize(z, state.codebook)
            commit = jnp.mean(losses.commitment_loss(z, q.codes, beta=BETA)) / z.shape[-1]
            return commit + (q.z_q * w).sum() / z.shape[0], q.indices

        (loss, idx), grad_z = jax.value_and_grad(loss_fn, has_aux=True)(z)
        state = quantizers.ema_update(state, z, idx, decay=DECAY)
        if restart:
            state, _ = quantizers.restart_dead_codes(state, z, key=key, threshold=THRESHOLD)
        return state, loss, grad_z

    return step


def _vqjax_residual_step():
    import jax
    import jax.numpy as jnp

    from vqjax import losses, quantizers

    def step(state, z, w, key):
        del key

        def loss_fn(z):
            r = quantizers.residual_quantize(z, state.codebook)
            commit = jax.vmap(lambda res, code: losses.commitment_loss(res, code, beta=BETA))(r.residuals, r.codes)
            loss = jnp.sum(jnp.mean(commit, axis=1)) / z.shape[-1] + (r.z_q * w).sum() / z.shape[0]
            return loss, (r.residuals, r.indices)

        (loss, (res, idx)), grad_z = jax.value_and_grad(loss_fn, has_aux=True)(z)
        update = jax.vmap(lambda s, x, i: quantizers.ema_update(s, x, i, decay=DECAY), in_axes=(0, 0, -1))
        return update(state, res, idx), loss, grad_z

    return step


def setup_vqjax(case: str, z, codebooks, w):
    import jax

    from vqjax import quantizers

    args = (jax.device_put(z), jax.device_put(w), jax.random.key(0))
    if case == "fsq":
        def fsq_loss(z, w):
            q = quantizers.fsq(z, FSQ_LEVELS)
            return (q.z_q * w).sum() / z.shape[0]

        fn = jax.jit(jax.value_and_grad(fsq_loss)).lower(*args[:2]).compile()
        return lambda: jax.block_until_ready(fn(*args[:2]))
    if case == "residual":
        state = jax.vmap(quantizers.ema_init)(codebooks)
        step = _vqjax_residual_step()
    else:
        state = quantizers.ema_init(codebooks[0])
        step = _vqjax_ema_step(restart=case == "ema_restart")
    fn = jax.jit(step, donate_argnums=0).lower(state, *args).compile()
    holder = [jax.device_put(state)]

    def call():
        holder[0], _, grad_z = fn(holder[0], *args)
        jax.block_until_ready((holder[0], grad_z))

    return call


# --------------------------------------------------------------------------- vector-quantize-pytorch


def setup_vqtorch(case: str, z, codebooks, w):
    import torch
    from vector_quantize_pytorch import FSQ, ResidualVQ, VectorQuantize

    torch.set_num_threads(TORCH_THREADS)
    n, d = z.shape
    k = codebooks.shape[1]
    if case == "fsq":
        module = FSQ(levels=list(FSQ_LEVELS))
    elif case == "residual":
        module = ResidualVQ(dim=d, num_quantizers=STAGES, codebook_size=k, decay=DECAY, commitment_weight=BETA,
                            rotation_trick=False)
    else:
        module = VectorQuantize(dim=d, codebook_size=k, decay=DECAY, commitment_weight=BETA, rotation_trick=False,
                                threshold_ema_dead_code=THRESHOLD if case == "ema_restart" else 0)
    module.train()
    zt = torch.from_numpy(z)[None].requires_grad_(True)  # [1, N, D]
    wt = torch.from_numpy(w)

    def call():
        zt.grad = None
        out = module(zt)
        quantized = out[0]
        loss = (quantized * wt).sum() / n
        if case != "fsq":
            loss = loss + out[2].sum()
        loss.backward()

    return call


def check_fsq(z) -> dict:
    """vqjax's and vector-quantize-pytorch's FSQ on the same inputs: codes and indices."""
    import torch
    from vector_quantize_pytorch import FSQ

    from vqjax import quantizers

    z = z[:, : len(FSQ_LEVELS)]
    q = quantizers.fsq(z, FSQ_LEVELS)
    codes_t, idx_t = FSQ(levels=list(FSQ_LEVELS))(torch.from_numpy(z)[None])
    return {
        "fsq_codes_max_abs_diff": float(np.max(np.abs(np.asarray(q.codes) - codes_t[0].detach().numpy()))),
        "fsq_indices_differing": int(np.sum(np.asarray(q.indices) != idx_t[0].numpy())),
        "n": int(z.shape[0]),
    }
