"""FSQ and residual VQ against vector-quantize-pytorch on the same inputs and codebooks.

Skipped without the ``bench`` extra (torch, vector-quantize-pytorch). Residual VQ runs with quantize dropout
off, ``rotation_trick=False`` and the peer in ``eval()`` (no EMA update, which keeps our codebooks; the peer's
output then carries no gradient, so only the forward pass is compared — the straight-through gradient is
tested in tests/test_residual_and_scalar_quantizers.py).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizers

torch = pytest.importorskip("torch")
vqp = pytest.importorskip("vector_quantize_pytorch")


def _bounded(z: np.ndarray, levels) -> np.ndarray:
    """FSQ's value before rounding (Mentzer et al. 2024, eps = 1e-3), in float64."""
    lv = np.asarray(levels, np.float64)
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = np.where(lv % 2 == 0, 0.5, 0.0)
    return np.tanh(z.astype(np.float64) + np.arctanh(offset / half_l)) * half_l - offset


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (7, 5, 3), (4, 4)])
def test_fsq_codes_and_indices_equal_the_peer(levels):
    """Equal everywhere except at exact rounding ties (a value within 1e-5 of k + ½ before rounding), where
    float32 tanh in two libraries (and PyTorch's SIMD paths from run to run) may round either way."""
    z = np.random.default_rng(0).normal(scale=2.0, size=(4096, len(levels))).astype(np.float32)
    q = quantizers.fsq(jnp.asarray(z), levels)
    codes_t, idx_t = vqp.FSQ(levels=list(levels))(torch.from_numpy(z)[None])
    b = _bounded(z, levels)
    tie = np.abs(np.abs(b - np.floor(b)) - 0.5) < 1e-5  # [N, D]
    differ = ~np.isclose(np.asarray(q.codes), codes_t[0].detach().numpy(), atol=1e-6)
    assert not np.any(differ & ~tie), np.argwhere(differ & ~tie)[:5]
    rows = ~tie.any(-1)
    assert rows.mean() > 0.99  # ties are rare: the comparison covers nearly every input
    np.testing.assert_array_equal(np.asarray(q.indices)[rows], idx_t[0].numpy()[rows])


def test_residual_vq_equals_the_peer_without_quantize_dropout():
    stages, k, d, n = 3, 8, 4, 256
    rng = np.random.default_rng(1)
    codebooks = rng.normal(size=(stages, k, d)).astype(np.float32)
    z = rng.normal(size=(n, d)).astype(np.float32)

    peer = vqp.ResidualVQ(dim=d, num_quantizers=stages, codebook_size=k, quantize_dropout=False,
                          rotation_trick=False)
    peer.eval()  # no EMA update: the codebooks stay ours
    with torch.no_grad():
        for layer, cb in zip(peer.layers, codebooks):
            layer._codebook.embed.copy_(torch.from_numpy(cb)[None])
            layer._codebook.initted.fill_(True)
    with torch.no_grad():
        out_t, idx_t, _ = peer(torch.from_numpy(z)[None])

    ours = quantizers.residual_quantize(jnp.asarray(z), jnp.asarray(codebooks))
    np.testing.assert_array_equal(np.asarray(ours.indices), idx_t[0].numpy())
    np.testing.assert_allclose(np.asarray(ours.z_q), out_t[0].detach().numpy(), rtol=1e-5, atol=1e-5)
