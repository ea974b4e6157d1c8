"""Workers for the codebook variants of ``quantizer.py``: every quantizer that vqjax and
vector-quantize-pytorch (1.32) both have, each side with the same settings, one row per side.

One call = one training step of the quantizer alone: forward, backward (the gradient w.r.t. ``z``, and
w.r.t. the codebook parameters where they are learned) and the codebook update, on ``z [N, D]`` float32
~ N(0, 1), with a linear "decoder" term ``sum(z_q · w) / N`` so that the gradient estimator (straight-through
or rotation trick) is in the backward. vqjax: its pure functions in one ``jax.jit`` with the state
donated; the peer: its module in train mode, ``loss.backward()`` and, for a learned codebook,
``torch.optim.SGD(lr=0.1).step()``; ``torch.set_num_threads(2)``. Both sides start from the same codebook
(the peer's ``embed``/``embed_avg``, ``frozen_codebook``/``code_transform.weight`` are overwritten).
Losses are means over the N·D elements on both sides (vqjax's per-vector losses, summed over D, / D).

Rows (``CASES``; default shapes N×K×D, K = 2^D implied for LFQ/BSQ and ∏ levels for FSQ):

* ``ema`` (16384×1024×64): nearest code, commitment loss (β = 0.25), EMA update (γ = 0.99).
  vqjax ``quantize`` + ``commitment_loss`` + ``ema_update``. Peer ``VectorQuantize(dim, K, decay=0.99,
  commitment_weight=0.25, rotation_trick=False)`` (its EMA update runs in the forward).
* ``ema_restart``: the same plus dead-code restarts, threshold 1 vector per batch (vqjax
  ``restart_dead_codes``; peer ``threshold_ema_dead_code=1``).
* ``rotation``: ``ema`` with the rotation trick instead of straight-through (vqjax
  ``quantize(rotation_trick=True)``; peer ``rotation_trick=True``, its default).
* ``learned_rotation``: a learned codebook, codebook + commitment loss (weight 1 each: the peer's one
  ``mse(q, z)`` with the gradient to both), rotation trick, SGD step (lr 0.1) on the codebook. vqjax
  ``quantize(rotation_trick=True)`` + ``codebook_loss`` + ``commitment_loss(β=1)``; peer
  ``VectorQuantize(dim, K, learnable_codebook=True, ema_update=False, rotation_trick=True,
  commitment_weight=1)``.
* ``cosine``: ``ema`` on a cosine-similarity codebook: z and codes l2-normalised, losses and EMA on the
  normalised vectors (vqjax ``quantize`` of ``l2_normalize(z)`` + ``ema_update(cosine=True)``, as its
  ``EMAVectorQuantizer(cosine=True)``; peer ``use_cosine_sim=True``, which allows only an EMA codebook).
* ``grouped`` (16384×1024×64): H = 4 heads of D/H = 16 channels, a codebook of K codes per head, EMA
  per head. vqjax ``grouped_quantize`` with ``[4, K, 16]`` codebooks + ``commitment_loss`` + per-head
  ``ema_update`` (vmapped); peer ``VectorQuantize(dim, K, heads=4, separate_codebook_per_head=True,
  codebook_dim=16, decay=0.99, commitment_weight=0.25, rotation_trick=False)`` (``codebook_dim=D/H``:
  no projection, so the heads are a split of z as in vqjax).
* ``simvq`` (16384×1024×64): codes ``E = C W``, C [K, D] frozen (randn/√D), W [D, D] learned, rotation
  trick, codebook loss + 0.25 · commitment loss, SGD step on W. vqjax: the pure form of ``vqjax.nn.SimVQ``
  (``quantize(z, C @ W, rotation_trick=True)`` + ``codebook_loss`` + ``commitment_loss(β=0.25)``); peer
  ``SimVQ(dim, K)`` (defaults: ``rotation_trick=True``, ``input_to_quantize_commit_loss_weight=0.25``).
* ``lfq`` (16384 vectors, D = 10 bits, K = 1024): sign quantization, entropy loss ×0.1 (τ = 0.01, γ = 1,
  the codebook entropy enumerated over all 2^10 codes on both sides), no commitment loss. vqjax ``lfq`` +
  ``lfq_entropy_loss(exact=True)``; peer ``LFQ(dim=10, entropy_loss_weight=0.1)`` (its defaults,
  ``inv_temperature=100``). No codebook to update.
* ``bsq``: as ``lfq`` on the unit sphere (codes ±1/√D). vqjax ``bsq`` + ``bsq_entropy_loss(exact=True)``
  (its default is the cheaper factorised codebook entropy, ``exact=False``; the peer has only the
  enumerated one); peer ``LFQ(dim=10, entropy_loss_weight=0.1, spherical=True)``.
* ``fsq`` (16384 vectors, levels (8, 5, 5, 5), D = 4): vqjax ``fsq`` vs peer ``FSQ(levels)``; no codebook,
  no loss but the decoder term.
* ``residual`` (16384×1024×64): S = 4 stages of K codes on successive residuals, per-stage commitment
  losses, per-stage EMA updates (vmapped in vqjax). Peer ``ResidualVQ(dim, num_quantizers=4,
  codebook_size=K, decay=0.99, commitment_weight=0.25, rotation_trick=False)``.

Peak memory (both sides, the same way, each implementation × row in its own subprocess): the process's peak
RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) over the warm-up and timed
calls, minus its RSS just before them (inputs built, modules made, vqjax's step compiled).

Checks (``check``, run in the vqjax worker after its timing when the peer is installed): one step of each
side from the same inputs and codebook; the indices that differ (LFQ/BSQ: the peer's bit order converted),
the largest difference of the gradient w.r.t. z, and for the SGD rows the largest difference of the
updated parameters. By design: the peer's ``ResidualVQ`` sends the decoder's gradient through every stage's
straight-through output (S × w / N; vqjax: w / N once), and EMA codebooks differ after the update (vqjax
bias-corrects the averages; the peer starts its counts at 1), so they are not compared.
"""

from __future__ import annotations

import numpy as np

BETA, DECAY, THRESHOLD, TORCH_THREADS = 0.25, 0.99, 1.0, 2
FSQ_LEVELS = (8, 5, 5, 5)
STAGES = HEADS = 4
LR = 0.1  # SGD step of the learned codebooks (learned_rotation, simvq)
ENTROPY_WEIGHT, TEMPERATURE = 0.1, 0.01  # LFQ / BSQ: the peer's defaults (inv_temperature = 100)
N, K, D, BITS = 16384, 1024, 64, 10

# case -> (label, default shape N×K×D); FSQ's K is its implied codebook size, D = len(levels); LFQ/BSQ: K = 2^D.
CASES = {
    "ema": ("EMA VQ", (N, K, D)),
    "ema_restart": ("EMA VQ + dead-code restarts", (N, K, D)),
    "rotation": ("EMA VQ + rotation trick", (N, K, D)),
    "learned_rotation": ("learned codebook (SGD) + rotation trick", (N, K, D)),
    "cosine": ("EMA VQ, cosine-similarity codebook", (N, K, D)),
    "grouped": (f"grouped VQ, {HEADS} heads, EMA", (N, K, D)),
    "simvq": ("SimVQ + rotation trick", (N, K, D)),
    "lfq": ("LFQ + entropy loss (D bits)", (N, 2**BITS, BITS)),
    "bsq": ("BSQ + entropy loss (D bits)", (N, 2**BITS, BITS)),
    "fsq": (f"FSQ {FSQ_LEVELS}", (N, int(np.prod(FSQ_LEVELS)), len(FSQ_LEVELS))),
    "residual": (f"residual VQ, {STAGES} EMA stages", (N, K, D)),
}
_VQ_QUICK = (1024, 64, 16)
QUICK = {**{c: _VQ_QUICK for c in CASES}, "lfq": (1024, 64, 6), "bsq": (1024, 64, 6),
         "fsq": (1024, 1000, 4)}  # --quick: a smoke run of the harness

_EMA_PEER = f"decay={DECAY}, commitment_weight={BETA}"
# case -> {impl: what runs}, for the table
RUNS = {
    "ema": {"vqjax": "quantize + commitment_loss + ema_update",
            "vqtorch": f"VectorQuantize({_EMA_PEER}, rotation_trick=False)"},
    "ema_restart": {"vqjax": "… + restart_dead_codes(threshold=1)",
                    "vqtorch": f"VectorQuantize({_EMA_PEER}, rotation_trick=False, threshold_ema_dead_code=1)"},
    "rotation": {"vqjax": "quantize(rotation_trick=True) + commitment_loss + ema_update",
                 "vqtorch": f"VectorQuantize({_EMA_PEER}, rotation_trick=True)"},
    "learned_rotation": {"vqjax": "quantize(rotation_trick=True) + codebook_loss + commitment_loss(β=1) + SGD",
                         "vqtorch": "VectorQuantize(learnable_codebook=True, ema_update=False, rotation_trick=True, "
                                    "commitment_weight=1) + SGD"},
    "cosine": {"vqjax": "quantize(l2_normalize(z)) + commitment_loss + ema_update(cosine=True)",
               "vqtorch": f"VectorQuantize({_EMA_PEER}, use_cosine_sim=True, rotation_trick=False)"},
    "grouped": {"vqjax": "grouped_quantize([4, K, 16]) + commitment_loss + vmapped ema_update",
                "vqtorch": f"VectorQuantize(heads=4, separate_codebook_per_head=True, codebook_dim=16, {_EMA_PEER}, "
                           "rotation_trick=False)"},
    "simvq": {"vqjax": "quantize(z, C @ W, rotation_trick=True) + codebook_loss + commitment_loss(β=0.25) + SGD",
              "vqtorch": "SimVQ (defaults: rotation_trick=True, input_to_quantize_commit_loss_weight=0.25) + SGD"},
    "lfq": {"vqjax": "lfq + 0.1 · lfq_entropy_loss(τ=0.01, exact=True)",
            "vqtorch": "LFQ(entropy_loss_weight=0.1), inv_temperature=100"},
    "bsq": {"vqjax": "bsq + 0.1 · bsq_entropy_loss(τ=0.01, exact=True)",
            "vqtorch": "LFQ(entropy_loss_weight=0.1, spherical=True), inv_temperature=100"},
    "fsq": {"vqjax": f"fsq(levels={FSQ_LEVELS})", "vqtorch": f"FSQ(levels={list(FSQ_LEVELS)})"},
    "residual": {"vqjax": f"residual_quantize ({STAGES} stages) + commitment_loss + vmapped ema_update",
                 "vqtorch": f"ResidualVQ(num_quantizers={STAGES}, {_EMA_PEER}, rotation_trick=False)"},
}
SGD_CASES = ("learned_rotation", "simvq")
NO_CODEBOOK = ("lfq", "bsq", "fsq")


def inputs(n: int, k: int, d: int):
    """``z [N, D]``, ``codebooks [S, K, D]`` ~ N(0, 1) and the decoder weights ``w [D]``: float32, fixed seed."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, d), dtype=np.float32)
    codebooks = rng.standard_normal((STAGES, k, d), dtype=np.float32)
    w = rng.standard_normal((d,), dtype=np.float32)
    return z, codebooks, w


def _grouped_codebooks(codebooks):
    """``[H, K, D/H]``: a codebook per head."""
    return np.ascontiguousarray(codebooks[:HEADS, :, : codebooks.shape[2] // HEADS])


def _simvq_params(codebooks):
    """SimVQ's frozen ``C [K, D] = randn / √D`` and learned ``W [D, D] ~ U(±1/√D)`` (the peer's inits)."""
    d = codebooks.shape[2]
    frozen = codebooks[0] / np.float32(np.sqrt(d))
    bound = 1.0 / np.sqrt(d)
    transform = np.random.default_rng(1).uniform(-bound, bound, (d, d)).astype(np.float32)
    return frozen, transform


def _cosine_codebook(codebook):
    return (codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- vqjax


def vqjax_step(case: str, codebooks):
    """``(step, state)``: ``step(state, z, w, key) -> (state, loss, grad_z, indices)``, one training step."""
    import jax
    import jax.numpy as jnp

    from vqjax import losses, quantizers

    def per_element(v, z):  # per-vector losses (summed over D) -> the mean over the N·D elements
        return jnp.mean(v) / z.shape[-1]

    def decoder(z_q, w):
        return (z_q * w).sum() / z_q.shape[0]

    if case in ("ema", "ema_restart", "rotation", "cosine"):
        cosine, rotation = case == "cosine", case == "rotation"
        codebook = _cosine_codebook(codebooks[0]) if cosine else codebooks[0]

        def step(state, z, w, key):
            def loss_fn(z):
                z_in = quantizers.l2_normalize(z) if cosine else z
                q = quantizers.quantize(z_in, state.codebook, rotation_trick=rotation)
                loss = per_element(losses.commitment_loss(z_in, q.codes, beta=BETA), z) + decoder(q.z_q, w)
                return loss, (q.indices, z_in)

            (loss, (idx, z_in)), grad_z = jax.value_and_grad(loss_fn, has_aux=True)(z)
            state = quantizers.ema_update(state, z_in, idx, decay=DECAY, cosine=cosine)
            if case == "ema_restart":
                state, _ = quantizers.restart_dead_codes(state, z_in, key=key, threshold=THRESHOLD)
            return state, loss, grad_z, idx

        return step, quantizers.ema_init(codebook)

    if case == "learned_rotation":
        def step(codebook, z, w, key):
            def loss_fn(codebook, z):
                q = quantizers.quantize(z, codebook, rotation_trick=True)
                vq = losses.codebook_loss(z, q.codes) + losses.commitment_loss(z, q.codes, beta=1.0)
                return per_element(vq, z) + decoder(q.z_q, w), q.indices

            (loss, idx), (grad_e, grad_z) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(codebook, z)
            return codebook - LR * grad_e, loss, grad_z, idx

        return step, jnp.asarray(codebooks[0])

    if case == "simvq":
        def step(params, z, w, key):
            frozen, transform = params

            def loss_fn(transform, z):
                q = quantizers.quantize(z, frozen @ transform, rotation_trick=True)
                vq = losses.codebook_loss(z, q.codes) + losses.commitment_loss(z, q.codes, beta=BETA)
                return per_element(vq, z) + decoder(q.z_q, w), q.indices

            (loss, idx), (grad_t, grad_z) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(transform, z)
            return (frozen, transform - LR * grad_t), loss, grad_z, idx

        return step, tuple(jnp.asarray(a) for a in _simvq_params(codebooks))

    if case == "grouped":
        def step(state, z, w, key):
            def loss_fn(z):
                g = quantizers.grouped_quantize(z, state.codebook)
                return per_element(losses.commitment_loss(z, g.codes, beta=BETA), z) + decoder(g.z_q, w), g.indices

            (loss, idx), grad_z = jax.value_and_grad(loss_fn, has_aux=True)(z)
            parts = z.reshape(z.shape[0], HEADS, -1)
            update = jax.vmap(lambda s, x, i: quantizers.ema_update(s, x, i, decay=DECAY), in_axes=(0, 1, 1))
            return update(state, parts, idx), loss, grad_z, idx

        return step, jax.vmap(quantizers.ema_init)(jnp.asarray(_grouped_codebooks(codebooks)))

    if case == "residual":
        def step(state, z, w, key):
            def loss_fn(z):
                r = quantizers.residual_quantize(z, state.codebook)
                commit = jax.vmap(lambda res, code: losses.commitment_loss(res, code, beta=BETA))(r.residuals, r.codes)
                loss = jnp.sum(jnp.mean(commit, axis=1)) / z.shape[-1] + decoder(r.z_q, w)
                return loss, (r.residuals, r.indices)

            (loss, (res, idx)), grad_z = jax.value_and_grad(loss_fn, has_aux=True)(z)
            update = jax.vmap(lambda s, x, i: quantizers.ema_update(s, x, i, decay=DECAY), in_axes=(0, 0, -1))
            return update(state, res, idx), loss, grad_z, idx

        return step, jax.vmap(quantizers.ema_init)(jnp.asarray(codebooks))

    if case in NO_CODEBOOK:  # no codebook: the state is empty
        def step(state, z, w, key):
            def loss_fn(z):
                if case == "fsq":
                    q = quantizers.fsq(z, FSQ_LEVELS)
                    return decoder(q.z_q, w), q.indices
                quantize, entropy = ((quantizers.lfq, quantizers.lfq_entropy_loss) if case == "lfq"
                                     else (quantizers.bsq, quantizers.bsq_entropy_loss))
                q = quantize(z)
                ent = jnp.mean(entropy(z, temperature=TEMPERATURE, diversity_weight=1.0, exact=True))
                return ENTROPY_WEIGHT * ent + decoder(q.z_q, w), q.indices

            (loss, idx), grad_z = jax.value_and_grad(loss_fn, has_aux=True)(z)
            return state, loss, grad_z, idx

        return step, ()

    raise ValueError(f"unknown case {case!r}")


def setup_vqjax(case: str, z, codebooks, w):
    import jax

    step, state = vqjax_step(case, codebooks)
    args = (jax.device_put(z), jax.device_put(w), jax.random.key(0))
    fn = jax.jit(step, donate_argnums=0).lower(state, *args).compile()
    holder = [jax.device_put(state)]

    def call():
        holder[0], _, grad_z, _ = fn(holder[0], *args)
        jax.block_until_ready((holder[0], grad_z))

    return call


# --------------------------------------------------------------------------- vector-quantize-pytorch


def _set_ema_codebook(vq, codebook) -> None:
    """The peer's EMA codebook (``[H, K, D]``): ``embed`` and ``embed_avg`` (= embed · its counts of 1)."""
    import torch

    with torch.no_grad():
        vq._codebook.embed.copy_(torch.from_numpy(codebook))
        vq._codebook.embed_avg.copy_(torch.from_numpy(codebook))


def peer_module(case: str, codebooks):
    """The peer's module, in train mode, with vqjax's codebook; and an SGD optimizer for a learned codebook."""
    import torch
    from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ, SimVQ, VectorQuantize

    torch.set_num_threads(TORCH_THREADS)
    _, k, d = codebooks.shape
    ema = {"decay": DECAY, "commitment_weight": BETA}
    optimizer = None
    if case == "fsq":
        module = FSQ(levels=list(FSQ_LEVELS))
    elif case in ("lfq", "bsq"):
        module = LFQ(dim=d, entropy_loss_weight=ENTROPY_WEIGHT, diversity_gamma=1.0, spherical=case == "bsq")
    elif case == "residual":
        module = ResidualVQ(dim=d, num_quantizers=STAGES, codebook_size=k, rotation_trick=False, **ema)
        for layer, codebook in zip(module.layers, codebooks):
            _set_ema_codebook(layer, codebook[None])
    elif case == "grouped":
        module = VectorQuantize(dim=d, codebook_size=k, heads=HEADS, separate_codebook_per_head=True,
                                codebook_dim=d // HEADS, rotation_trick=False, **ema)
        _set_ema_codebook(module, _grouped_codebooks(codebooks))
    elif case == "simvq":
        module = SimVQ(dim=d, codebook_size=k)
        frozen, transform = _simvq_params(codebooks)
        with torch.no_grad():
            module.frozen_codebook.copy_(torch.from_numpy(frozen))
            module.code_transform.weight.copy_(torch.from_numpy(transform.T.copy()))  # Linear keeps W as [out, in]
        optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    elif case == "learned_rotation":
        module = VectorQuantize(dim=d, codebook_size=k, learnable_codebook=True, ema_update=False, rotation_trick=True,
                                commitment_weight=1.0)
        with torch.no_grad():
            module._codebook.embed.copy_(torch.from_numpy(codebooks[:1]))
        optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    else:
        cosine = case == "cosine"
        module = VectorQuantize(dim=d, codebook_size=k, rotation_trick=case == "rotation", use_cosine_sim=cosine,
                                threshold_ema_dead_code=THRESHOLD if case == "ema_restart" else 0, **ema)
        _set_ema_codebook(module, _cosine_codebook(codebooks[:1]) if cosine else codebooks[:1])
    return module.train(), optimizer


def peer_step(case: str, codebooks, z, w):
    """``step() -> (loss, grad_z [N, D], indices)``: one training step of the peer on ``z``."""
    import torch

    module, optimizer = peer_module(case, codebooks)
    zt = torch.from_numpy(z)[None].requires_grad_(True)  # [1, N, D]
    wt = torch.from_numpy(w)
    n = z.shape[0]

    def step():
        zt.grad = None
        out = module(zt)
        loss = (out[0] * wt).sum() / n
        if case != "fsq":  # the peer's losses: commitment (VQ, SimVQ, residual: per stage) or entropy (LFQ, BSQ)
            loss = loss + out[2].sum()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss, zt.grad, out[1]

    return step, module


def setup_vqtorch(case: str, z, codebooks, w):
    step, _ = peer_step(case, codebooks, z, w)
    return step


# --------------------------------------------------------------------------- checks


def _lsb_first(indices, bits: int):
    """The peer's LFQ indices (channel 0 = the most significant bit) in vqjax's order (least significant)."""
    out = np.zeros_like(indices)
    for b in range(bits):
        out |= ((indices >> (bits - 1 - b)) & 1) << b
    return out


def check_case(case: str, z, codebooks, w) -> dict:
    """One step of each side from the same inputs and codebook: indices, gradient w.r.t. z, SGD-updated params."""
    import jax

    step, state = vqjax_step(case, codebooks)
    new_state, _, grad_z, idx = jax.jit(step)(state, z, w, jax.random.key(0))
    idx, grad_z = np.asarray(idx).reshape(z.shape[0], -1), np.asarray(grad_z)
    peer, module = peer_step(case, codebooks, z, w)
    _, grad_t, idx_t = peer()
    idx_t = idx_t.detach().numpy().reshape(z.shape[0], -1)
    if case in ("lfq", "bsq"):
        idx_t = _lsb_first(idx_t, z.shape[1])
    grad_t = grad_t[0].numpy()
    result = {"n": int(z.shape[0]), "indices_differing": int(np.sum(np.any(idx != idx_t, axis=1))),
              "grad_z_max_abs_diff": float(np.max(np.abs(grad_z - grad_t))),
              "grad_z_max_abs": float(np.max(np.abs(grad_t)))}
    if case == "residual":  # the peer's decoder gradient is S × w / N (every stage's straight-through output)
        extra = (STAGES - 1) * w / z.shape[0]
        result["grad_z_max_abs_diff_less_peer_extra"] = float(np.max(np.abs(grad_z - (grad_t - extra))))
    if case == "simvq":
        result["params_max_abs_diff"] = float(np.max(np.abs(np.asarray(new_state[1]) -
                                                            module.code_transform.weight.detach().numpy().T)))
    elif case == "learned_rotation":
        result["params_max_abs_diff"] = float(np.max(np.abs(np.asarray(new_state) -
                                                            module._codebook.embed.detach().numpy()[0])))
    return result


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
