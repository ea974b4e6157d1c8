"""The synchronised update and the affine codebook against vector-quantize-pytorch and the authors' vqtorch.

vector-quantize-pytorch (``VectorQuantize(learnable_codebook=True, ema_update=False, sync_update_v=ν)``)
gets the same inputs and codebook as :func:`vqjax.quantizers.synchronized_update`: outputs, indices and
the loss agree, and so do the gradients with ν = 0. With ν > 0 its gradients differ by design: it adds
``ν (q - sg[q])`` to its straight-through output ``q = z + sg[c - z]``, whose only gradient path is ``z``,
so its encoder gets ``(1 + ν) g`` and its codebook nothing of the task gradient ``g``, where the paper
(and here) give the encoder ``g`` and the codebook ``ν g``. The tests check exactly that relation.

The paper's own expression, from the authors' vqtorch (``VectorQuant.straight_through_approximation``,
``z + sg[c - z] + ν c - sg[ν c]``, with the learned ``AffineTransform``: ``scale = 1 + α s'``,
``shift = α b'``), is written out in torch and matched value for value and gradient for gradient.

vector-quantize-pytorch's ``affine_param`` is not a learned affine map: its scale and shift come from EMA
statistics of the codebook and of the batches. Only its form is comparable: with our ``scale`` and
``shift`` set to its statistics, :func:`vqjax.quantizers.affine_codebook` gives its codes and indices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizers

torch = pytest.importorskip("torch")
vqp = pytest.importorskip("vector_quantize_pytorch")

K, D, N = 8, 4, 24


def _inputs(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, D)).astype(np.float32)
    e = rng.normal(size=(K, D)).astype(np.float32)
    w = rng.normal(size=(N, D)).astype(np.float32)  # the task's upstream gradient ∂L/∂z_q
    return z, e, w


def _ours(z, e, w, nu):
    """Σ w ⊙ z_q plus vector-quantize-pytorch's loss ``mean((z - c)²)`` = (codebook + commitment loss) / (N·D)."""

    def objective(z, e):
        q = quantizers.quantize(z, e)
        z_q = quantizers.synchronized_update(z, q.codes, nu)
        loss = jnp.mean(jnp.sum(jnp.square(jax.lax.stop_gradient(z) - q.codes), -1)) / D
        commit = jnp.mean(jnp.sum(jnp.square(z - jax.lax.stop_gradient(q.codes)), -1)) / D
        return jnp.sum(w * z_q) + loss + commit, (z_q, q.indices, loss)

    (gz, ge), (z_q, idx, loss) = jax.grad(objective, argnums=(0, 1), has_aux=True)(jnp.asarray(z), jnp.asarray(e))
    return z_q, idx, loss, gz, ge


def _peer(z, e, w, nu):
    vq = vqp.VectorQuantize(dim=D, codebook_size=K, learnable_codebook=True, ema_update=False, rotation_trick=False,
                            sync_update_v=nu, commitment_weight=1.0)
    vq.train()
    with torch.no_grad():
        vq._codebook.embed.copy_(torch.from_numpy(e)[None])
    x = torch.from_numpy(z)[None].clone().requires_grad_(True)
    out, idx, loss = vq(x)
    ((out * torch.from_numpy(w)[None]).sum() + loss).backward()
    embed_grad = vq._codebook.embed.grad
    return out.detach()[0].numpy(), idx[0].numpy(), float(loss.detach()), x.grad[0].numpy(), embed_grad[0].numpy()


@pytest.mark.parametrize("nu", [0.0, 0.3, 1.0])
def test_sync_update_against_vector_quantize_pytorch(nu):
    z, e, w = _inputs(0)
    z_q, idx, loss, gz, ge = _ours(z, e, w, nu)
    p_out, p_idx, p_loss, p_gz, p_ge = _peer(z, e, w, nu)
    np.testing.assert_array_equal(idx, p_idx)
    np.testing.assert_allclose(z_q, p_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(z_q, e[p_idx])  # forward: exactly the codes
    np.testing.assert_allclose(loss, p_loss, rtol=1e-5)
    scatter_w = np.zeros((K, D), np.float32)
    np.add.at(scatter_w, np.asarray(idx), w)
    # the encoder: ours g, the peer's (1 + ν) g (besides the same commitment gradient)
    np.testing.assert_allclose(gz, p_gz - nu * w, rtol=1e-5, atol=1e-6)
    # the codebook: ours ν Σ g per code, the peer's nothing of the task (besides the same codebook-loss gradient)
    np.testing.assert_allclose(ge, p_ge + nu * scatter_w, rtol=1e-5, atol=1e-6)
    if nu == 0.0:
        np.testing.assert_allclose(gz, p_gz, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ge, p_ge, rtol=1e-5, atol=1e-6)


def _vqtorch_sync(z, c, nu):
    """vqtorch's ``VectorQuant.straight_through_approximation`` (the paper's rule), verbatim in torch."""
    if nu > 0:
        return z + (c - z).detach() + (nu * c) + (-nu * c).detach()
    return z + (c - z).detach()


@pytest.mark.parametrize("nu,alpha", [(0.0, 1.0), (0.2, 1.0), (2.0, 10.0)])
def test_affine_and_sync_against_the_authors_vqtorch_expression(nu, alpha):
    """vqtorch: codes ``(1 + α s') ⊙ e + α b'`` and the sync rule; a β-weighted loss as its ``compute_loss``."""
    z, e, w = _inputs(1)
    rng = np.random.default_rng(2)
    s_raw = (0.1 * rng.normal(size=D)).astype(np.float32)  # vqtorch's AffineTransform.scale (0 at init)
    b_raw = (0.1 * rng.normal(size=D)).astype(np.float32)  # its .bias
    beta = 0.95  # vqtorch's default: (1 - β) ||z - sg[q]||² + β ||sg[z] - q||², mean over elements

    t = {k: torch.from_numpy(v).clone().requires_grad_(True) for k, v in
         (("z", z), ("e", e), ("s", s_raw), ("b", b_raw))}
    codebook = (1.0 + alpha * t["s"]) * t["e"] + alpha * t["b"]
    with torch.no_grad():
        t_idx = torch.cdist(t["z"], codebook).argmin(-1)
    c = torch.nn.functional.embedding(t_idx, codebook)
    t_loss = ((1 - beta) * ((t["z"] - c.detach()) ** 2) + beta * ((t["z"].detach() - c) ** 2)).mean()
    t_zq = _vqtorch_sync(t["z"], c, nu)
    ((t_zq * torch.from_numpy(w)).sum() + t_loss).backward()

    def objective(z, e, scale, shift):
        q = quantizers.quantize(z, quantizers.affine_codebook(e, scale, shift))
        z_q = quantizers.synchronized_update(z, q.codes, nu)
        loss = ((1 - beta) * jnp.sum(jnp.square(z - jax.lax.stop_gradient(q.codes)))
                + beta * jnp.sum(jnp.square(jax.lax.stop_gradient(z) - q.codes))) / (N * D)
        return jnp.sum(w * z_q) + loss, (z_q, q.indices)

    scale, shift = 1.0 + alpha * jnp.asarray(s_raw), alpha * jnp.asarray(b_raw)
    (gz, ge, gs, gb), (z_q, idx) = jax.grad(objective, argnums=(0, 1, 2, 3), has_aux=True)(
        jnp.asarray(z), jnp.asarray(e), scale, shift)
    np.testing.assert_array_equal(idx, t_idx.numpy())
    np.testing.assert_allclose(z_q, t_zq.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gz, t["z"].grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ge, t["e"].grad.numpy(), rtol=1e-4, atol=1e-6)
    # vqtorch's raw parameters: ∂/∂s' = α ∂/∂scale, ∂/∂b' = α ∂/∂shift
    np.testing.assert_allclose(alpha * np.asarray(gs), t["s"].grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alpha * np.asarray(gb), t["b"].grad.numpy(), rtol=1e-4, atol=1e-5)


def test_vector_quantize_pytorch_affine_param_is_our_map_with_its_statistics():
    """Its ``affine_param`` codes ``(e - μ_e) σ_z/σ_e + μ_z`` (EMA statistics, not learned) are
    :func:`affine_codebook` with ``scale = σ_z/σ_e``, ``shift = μ_z - μ_e σ_z/σ_e``: the same codes and indices."""
    z, e, _ = _inputs(3)
    z = 2.0 * z + 1.5  # encoder outputs away from the codebook's statistics
    vq = vqp.VectorQuantize(dim=D, codebook_size=K, learnable_codebook=True, ema_update=False, rotation_trick=False,
                            affine_param=True, commitment_weight=1.0)
    vq.train()
    with torch.no_grad():
        vq._codebook.embed.copy_(torch.from_numpy(e)[None])
    for step in range(2):  # the first call initialises the statistics, the second averages them
        zs = z + 0.1 * step
        out, idx, _ = vq(torch.from_numpy(zs)[None])
        cb = vq._codebook
        sigma_e = cb.codebook_variance.clamp(min=1e-5).sqrt()[0, 0].numpy()
        sigma_z = cb.batch_variance.clamp(min=1e-5).sqrt()[0, 0].numpy()
        mu_e, mu_z = cb.codebook_mean[0, 0].numpy(), cb.batch_mean[0, 0].numpy()
        if step == 0:  # initialised to this batch's and the codebook's statistics
            np.testing.assert_allclose(mu_e, e.mean(0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(mu_z, zs.mean(0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(sigma_z, zs.std(0), rtol=1e-5, atol=1e-6)
        scale = sigma_z / sigma_e
        codes = quantizers.affine_codebook(e, scale, mu_z - mu_e * scale)
        q = quantizers.quantize(jnp.asarray(zs), codes)
        np.testing.assert_array_equal(q.indices, idx[0].numpy())
        np.testing.assert_allclose(q.z_q, out.detach()[0].numpy(), rtol=1e-5, atol=1e-5)
