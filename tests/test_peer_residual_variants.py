"""Residual FSQ, residual LFQ, grouped residual VQ and the shared codebook against vector-quantize-pytorch (1.32).

Skipped without the ``bench`` extra (torch, vector-quantize-pytorch). Same inputs and parameters; quantize dropout
off (the peer draws one n per batch from Python's ``random``, we draw one per example from a JAX key: the draws
cannot match, and tests/test_residual_extensions.py checks ours against NumPy).

Differences by design, checked here rather than hidden:

- Gradients. The peer passes every stage straight through and sums the stages, so its ``∂z_q/∂z`` is S·I for
  ``ResidualLFQ`` (and ``ResidualVQ``) and, for ``ResidualFSQ``, the bounding's derivative times the number of
  stages whose scaled residual is inside the clamp. Ours is straight-through for the sum (I; FSQ: the bounding's
  derivative), the library's residual convention (:func:`vqjax.quantizers.residual_quantize`): the same
  direction, a scale that does not grow with S.
- ``ResidualLFQ``'s indices put channel 0 in the most significant bit (ours: least significant), and it maps an
  exact 0 to -1 (ours: +1). Its per-stage entropy loss is LFQ's on the unscaled residual against codes
  ``±2^-s``, i.e. on ``u_s = 2^s r_s`` at temperature ``τ·4^s``; ours (the module) uses τ at every stage. The
  pure pieces agree once the temperature is matched.
- Rounding ties (a value within float32 rounding of a level boundary) may go either way in two libraries (their
  ``tanh`` differ in the last bit): the FSQ comparisons exclude those rows, which are rare.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizers

torch = pytest.importorskip("torch")
vqp = pytest.importorskip("vector_quantize_pytorch")


def _fsq_tie_free_rows(r, levels, tol=1e-5):
    """Rows whose every stage input is not within ``tol`` of a rounding boundary nor of the clamp (float32)."""
    lv = np.asarray(levels, np.float64)
    ok = np.ones(r.residuals.shape[1:-1], bool)
    for s, res in enumerate(np.asarray(r.residuals, np.float64)):
        u = res * lv**s
        b = (lv - 1) * (np.clip(u, -1, 1) + 1) / 2 + 0.5
        ok &= ~np.any(np.abs(b - np.round(b)) < tol, axis=-1) & ~np.any(np.abs(np.abs(u) - 1) < tol, axis=-1)
    return ok


@pytest.mark.parametrize("levels, stages", [((8, 5, 5, 5), 3), ((7, 5, 3), 4), ((4, 4), 2), ((2, 3), 3)])
def test_residual_fsq_equals_the_peer(levels, stages):
    rng = np.random.default_rng(0)
    z = rng.normal(scale=1.5, size=(2048, len(levels))).astype(np.float32)
    w = rng.normal(size=z.shape).astype(np.float32)
    peer = vqp.ResidualFSQ(levels=list(levels), num_quantizers=stages, quantize_dropout=False)
    x = torch.from_numpy(z)[None].requires_grad_(True)
    out_t, idx_t = peer(x)
    (out_t * torch.from_numpy(w)[None]).sum().backward()

    ours = quantizers.residual_fsq(jnp.asarray(z), levels, stages)
    rows = _fsq_tie_free_rows(ours, levels)
    assert rows.mean() > 0.99
    np.testing.assert_array_equal(np.asarray(ours.indices)[rows], idx_t[0].numpy()[rows])
    np.testing.assert_allclose(np.asarray(ours.z_q)[rows], out_t[0].detach().numpy()[rows], rtol=1e-5, atol=1e-6)
    # decoding our indices with the peer gives our z_q: the same codes, scales and index layout
    decoded = peer.get_output_from_indices(torch.from_numpy(np.asarray(ours.indices, np.int64))[None])[0]
    np.testing.assert_allclose(decoded.numpy(), ours.z_q, rtol=1e-5, atol=1e-6)

    # gradient: the peer's is ours times the number of stages inside the clamp, per channel
    g = jax.grad(lambda a: jnp.sum(quantizers.residual_fsq(a, levels, stages).z_q * w))(jnp.asarray(z))
    lv = np.asarray(levels, np.float64)
    inside = sum(np.abs(np.asarray(res, np.float64) * lv**s) <= 1 for s, res in enumerate(ours.residuals))
    np.testing.assert_allclose(x.grad[0].numpy()[rows], (np.asarray(g) * inside)[rows], rtol=1e-5, atol=1e-6)


def _reverse_bits(indices, d):
    bits = (np.asarray(indices)[..., None] >> np.arange(d)) & 1
    return (bits[..., ::-1] * (1 << np.arange(d))).sum(-1)


@pytest.mark.parametrize("d, stages", [(4, 3), (6, 5)])
def test_residual_lfq_equals_the_peer(d, stages):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(1024, d)).astype(np.float32)
    w = rng.normal(size=z.shape).astype(np.float32)
    peer = vqp.ResidualLFQ(dim=d, num_quantizers=stages, codebook_size=2**d, quantize_dropout=False,
                           entropy_loss_weight=1.0, commitment_loss_weight=0.0)
    peer.train()  # straight-through gradients and entropy losses (LFQ has no state to update)
    x = torch.from_numpy(z)[None].requires_grad_(True)
    out_t, idx_t, losses_t = peer(x)
    (out_t * torch.from_numpy(w)[None]).sum().backward()

    ours = quantizers.residual_lfq(jnp.asarray(z), stages)
    np.testing.assert_allclose(ours.z_q, out_t[0].detach().numpy(), atol=1e-6)
    np.testing.assert_array_equal(_reverse_bits(ours.indices, d), idx_t[0].numpy())
    decoded = peer.get_output_from_indices(torch.from_numpy(_reverse_bits(ours.indices, d).astype(np.int64))[None])
    np.testing.assert_allclose(decoded[0].numpy(), ours.z_q, atol=1e-6)
    # gradient: the peer sums S straight-through copies
    g = jax.grad(lambda a: jnp.sum(quantizers.residual_lfq(a, stages).z_q * w))(jnp.asarray(z))
    np.testing.assert_allclose(x.grad[0].numpy(), stages * np.asarray(g), rtol=1e-6)
    # entropy loss per stage: LFQ's on u_s = 2^s r_s at temperature 0.01·4^s (the peer's inv_temperature 100)
    for s in range(stages):
        ent = quantizers.lfq_entropy_loss(ours.residuals[s] * 2.0**s, temperature=0.01 * 4.0**s, exact=True)
        np.testing.assert_allclose(float(jnp.mean(ent)), losses_t[s].item(), rtol=1e-4, atol=1e-4)


def _peer_residual_vq(dim, stages, k, books, **kw):
    peer = vqp.ResidualVQ(dim=dim, num_quantizers=stages, codebook_size=k, quantize_dropout=False,
                          rotation_trick=False, **kw)
    peer.eval()  # no EMA update: the codebooks stay ours
    with torch.no_grad():
        for layer, cb in zip(peer.layers, books):
            layer._codebook.embed.copy_(torch.from_numpy(np.asarray(cb))[None])
            layer._codebook.initted.fill_(True)
    return peer


def test_grouped_residual_vq_equals_the_peer_without_quantize_dropout():
    groups, stages, k, d, n = 3, 2, 8, 6, 256
    rng = np.random.default_rng(2)
    books = rng.normal(size=(groups, stages, k, d // groups)).astype(np.float32)
    z = rng.normal(size=(n, d)).astype(np.float32)
    peer = vqp.GroupedResidualVQ(dim=d, groups=groups, num_quantizers=stages, codebook_size=k, quantize_dropout=False,
                                 rotation_trick=False)
    peer.eval()
    with torch.no_grad():
        for rvq, group_books in zip(peer.rvqs, books):
            for layer, cb in zip(rvq.layers, group_books):
                layer._codebook.embed.copy_(torch.from_numpy(cb)[None])
                layer._codebook.initted.fill_(True)
        out_t, idx_t, _ = peer(torch.from_numpy(z)[None])  # indices [G, 1, n, S]

    ours = quantizers.grouped_residual_quantize(jnp.asarray(z), jnp.asarray(books))  # indices [n, G, S]
    np.testing.assert_array_equal(np.moveaxis(np.asarray(ours.indices), 1, 0), idx_t[:, 0].numpy())
    np.testing.assert_allclose(ours.z_q, out_t[0].numpy(), rtol=1e-5, atol=1e-5)

    from flax import nnx

    from vqjax.nn import GroupedResidualVectorQuantizer

    module = GroupedResidualVectorQuantizer(k, d, stages, groups, rngs=nnx.Rngs(0))
    for sub, b in zip(module.group_quantizers, books):
        sub.codebooks[...] = jnp.asarray(b)
    out = module(jnp.asarray(z))  # indices flattened to [n, G·S], group-major
    np.testing.assert_array_equal(np.asarray(out.indices).reshape(n, groups, stages).transpose(1, 0, 2),
                                  idx_t[:, 0].numpy())


def test_shared_codebook_equals_the_peer():
    stages, k, d, n = 3, 16, 4, 256
    rng = np.random.default_rng(3)
    book = rng.normal(size=(k, d)).astype(np.float32)
    z = rng.normal(size=(n, d)).astype(np.float32)
    peer = vqp.ResidualVQ(dim=d, num_quantizers=stages, codebook_size=k, quantize_dropout=False, rotation_trick=False,
                          shared_codebook=True)
    peer.eval()
    with torch.no_grad():
        codebook = peer.layers[0]._codebook
        assert all(layer._codebook is codebook for layer in peer.layers)  # one codebook object for every stage
        codebook.embed.copy_(torch.from_numpy(book)[None])
        codebook.initted.fill_(True)
        out_t, idx_t, _ = peer(torch.from_numpy(z)[None])
    ours = quantizers.residual_quantize(jnp.asarray(z), jnp.asarray(book), num_stages=stages)
    np.testing.assert_array_equal(np.asarray(ours.indices), idx_t[0].numpy())
    np.testing.assert_allclose(ours.z_q, out_t[0].numpy(), rtol=1e-5, atol=1e-5)
