"""The jitted steps: one run's train and eval steps, and the same over a runs axis (sweeps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vqjax.nn import Hyperparameter
from vqjax.quantizers import perplexity
from vqjax.training._mesh import RUNS_AXIS
from vqjax.training._state import TrainState, eval_key, step_key

PLACEMENTS = ("vmap", "loop", "waves")


def train_step_fn(graphdef, optimizer: Callable[[dict], optax.GradientTransformation], objective, *,
                  micro_batches: int = 1) -> Callable:
    """The unjitted ``step(state, batch, hparams) -> (state, metrics)`` of one run.

    ``optimizer(hparams)`` builds the optax transformation inside the trace (so a learning rate in
    ``hparams`` may be a per-run array). The loss is differentiated with respect to the
    ``nnx.Param`` variables; the model is in training mode and variables the objective changes in
    place (``rest``: EMA codebooks, batch statistics) are carried over. ``micro_batches``: see
    :func:`micro_batch_value_and_grad`.
    """
    guarded = guarded_train_step_fn(graphdef, optimizer, objective, micro_batches=micro_batches)

    def step(state: TrainState, batch: Any, hparams: dict):
        new, _, metrics = guarded(state, None, hparams, batch)
        return new, metrics

    return step


def guarded_train_step_fn(graphdef, optimizer, objective, *, micro_batches: int = 1) -> Callable:
    """``step(state, diverged, hparams, batch) -> (state, diverged, metrics)``: one run's step that
    freezes a diverging run (``diverged=None``: no guard).

    ``diverged`` ([] bool) becomes set when the loss or the gradient is not finite; from then on
    the state stays as it was before that step (the last state with a finite loss and gradient).
    The test comes before the update, so XLA fuses the choice into the update's own pass over the
    parameters and optimizer state (a select after the update would cost another pass).
    """

    def step(state: TrainState, diverged, hparams: dict, batch: Any):
        def loss_fn(params, batch=batch, key=None):
            # copy=True: fresh Variables of this trace, which the objective may update in place (flax#5050)
            model = nnx.merge(graphdef, params, state.rest, copy=True)
            model.train()  # NNX training mode: dropout on, running statistics (EMA codebooks) update
            key = step_key(state) if key is None else key
            loss, metrics = objective(model, batch, key=key, step=state.step, hparams=hparams)
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, rest)

        if micro_batches == 1:
            (loss, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        else:
            if not has_only_hyperparameter_state(state.rest):
                raise ValueError(f"`micro_batches`={micro_batches} needs a model whose only non-parameter state "
                                 "is hyperparameters: an objective that updates state (an EMA codebook, batch "
                                 "statistics) sees each micro-batch alone. Use micro_batches=1.")
            loss, metrics, grads = micro_batch_value_and_grad(loss_fn, state.params, batch, step_key(state),
                                                              micro_batches)
            rest = state.rest
        grad_norm = optax.tree.norm(grads)
        tx = optimizer(hparams)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=grad_norm)
        new = TrainState(state.step + 1, params, rest, opt_state, state.key)
        if diverged is None:
            return new, None, metrics
        diverged = diverged | ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
        return jax.tree.map(lambda n, o: jnp.where(diverged, o, n), new, state), diverged, metrics

    return step


def auto_micro_batches(per_device_batch: int, *, platform: str, threads_per_device: int, min_size: int = 16) -> int:
    """How many concurrent micro-batches a step splits each device's batch into, by default.

    On CPU the largest ``m <= 4 × threads_per_device`` that divides ``per_device_batch`` and leaves
    at least ``min_size`` examples per part (1 if none): on 2 cores the VQ-VAE step runs fastest
    with 8 parts of 16 (``benchmarks/train_step.py``). On GPU and TPU 1: one large batch already
    fills the device.
    """
    if platform != "cpu":
        return 1
    for m in range(min(4 * max(1, threads_per_device), per_device_batch // min_size), 1, -1):
        if per_device_batch % m == 0:
            return m
    return 1


def has_only_hyperparameter_state(rest) -> bool:
    """Whether a model's non-parameter state (``TrainState.rest``) is only :class:`vqjax.nn.Hyperparameter`
    values, which no step changes: then micro-batches of a batch see the same model."""
    leaves = jax.tree.leaves(rest, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return all(isinstance(v, Hyperparameter) for v in leaves)


def micro_batch_value_and_grad(loss_fn: Callable, params, batch: Any, key: jax.Array, micro_batches: int):
    r"""The loss, metrics and gradient of a batch as the mean over ``micro_batches`` parts of it.

    ``loss_fn(params, part, key) -> (loss, (metrics, rest))``. Part ``i`` holds the examples
    ``i, i + m, i + 2m, ...`` of the batch (``m`` = ``micro_batches``; interleaved, so each part is
    spread evenly over the devices the batch is sharded over, with no data movement), and its key is
    ``fold_in(key, i)``. The parts' forward and backward passes are independent computations in one
    program, which XLA's CPU runtime runs concurrently on its thread pool: for the small
    convolutions of these models that keeps the cores busier than splitting each convolution
    across threads (the VQ-VAE step ~1.5× faster on 2 cores), with no collective between devices.

    For an objective that is a mean of per-example terms, :math:`\nabla \frac1m \sum_i \bar\ell_i =
    \nabla \bar\ell` exactly (equal parts); random draws differ from the unsplit step's. Metrics:
    ``sum/*``, ``counts*`` and ``weight`` add up over the parts; code statistics (``perplexity``,
    ``used_fraction``, ``dead_codes`` from ``counts``; ``perplexity_<n>``, ``used_<n>`` from
    ``counts_<n>``) are recomputed from the summed counts, as evaluation does over batches; every
    other metric is the mean over the parts.
    """
    b = jax.tree.leaves(batch)[0].shape[0]
    if b % micro_batches:
        raise ValueError(f"`micro_batches`={micro_batches} must divide the batch size {b}.")

    def part(i):
        return jax.tree.map(lambda x: x.reshape(b // micro_batches, micro_batches, *x.shape[1:])[:, i], batch)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    outs = [grad_fn(params, part(i), jax.random.fold_in(key, i)) for i in range(micro_batches)]
    mean = lambda *xs: sum(xs) / micro_batches
    loss = mean(*(o[0][0] for o in outs))
    grads = jax.tree.map(mean, *(o[1] for o in outs))
    return loss, combine_micro_batch_metrics([o[0][1][0] for o in outs]), grads


def combine_micro_batch_metrics(parts: list[dict]) -> dict:
    """The metrics of one batch from those of its equal parts (:func:`micro_batch_value_and_grad`)."""
    out = {}
    for k in parts[0]:
        values = [p[k] for p in parts]
        total = sum(values[1:], values[0])
        out[k] = total if k.startswith(("sum/", "counts")) or k == "weight" else total / len(parts)
    if "counts" in out and {"perplexity", "used_fraction", "dead_codes"} & out.keys():
        counts = out["counts"]  # [K], or [S, K] for residual VQ: means over the stages, dead codes summed
        out.update(perplexity=jnp.mean(perplexity(counts)), used_fraction=jnp.mean(counts > 0),
                   dead_codes=jnp.sum(counts == 0).astype(jnp.float32))
    for k in [k for k in out if k.startswith("counts_")]:
        name = k[len("counts_"):]
        if f"perplexity_{name}" in out:
            out[f"perplexity_{name}"] = perplexity(out[k])
        if f"used_{name}" in out:
            out[f"used_{name}"] = jnp.mean(out[k] > 0)
    return {k: out[k] for k in parts[0]}


def eval_step_fn(graphdef, objective) -> Callable:
    """The unjitted ``eval_step(state, batch, weights, hparams) -> metrics`` of one run (``eval()`` mode).

    The objective's key depends on the run's seed only: the same for every batch and every
    checkpoint. :func:`vqjax.training.evaluate` adds ``batch["index"]``, each example's index in
    the split; an objective folds it into the key for randomness that belongs to an example.
    """

    def eval_step(state: TrainState, batch: Any, weights: jax.Array, hparams: dict):
        model = nnx.merge(graphdef, state.params, state.rest)
        model.eval()  # NNX evaluation mode: deterministic, running statistics frozen
        _, metrics = objective(model, batch, key=eval_key(state), step=state.step, hparams=hparams, weights=weights)
        return metrics

    return eval_step


def make_train_step(graphdef, tx: optax.GradientTransformation, objective, *, micro_batches: int = 1):
    """``train_step(state, batch, hparams=None) -> (state, metrics)``: one run, jitted, ``state`` donated.

    ``objective(model, batch, key=..., step=..., hparams=...)`` returns ``(loss, metrics)``; the
    key is ``fold_in(seed key, step)``. ``hparams`` (default ``{}``) is passed to the objective.
    ``micro_batches``: the batch's loss and gradient as the mean over that many concurrent parts
    (:func:`micro_batch_value_and_grad`; CPU speed).
    """
    step = jax.jit(train_step_fn(graphdef, lambda hp: tx, objective, micro_batches=micro_batches),
                   donate_argnums=0)
    return lambda state, batch, hparams=None: step(state, batch, {} if hparams is None else hparams)


def make_eval_step(graphdef, objective):
    """``eval_step(state, batch, weights, hparams=None) -> metrics``: one run, jitted, no update."""
    step = jax.jit(eval_step_fn(graphdef, objective))
    return lambda state, batch, weights, hparams=None: step(state, batch, weights, {} if hparams is None else hparams)


def _over_local_runs(fn: Callable, placement: str, num_shared: int) -> Callable:
    """``fn`` of one run -> the same over a device's local runs: the leading arguments carry a runs
    axis ``[r, ...]`` (as do the outputs), the last ``num_shared`` (the batch) are the same for all."""
    if placement == "vmap":
        return lambda *args: jax.vmap(fn, in_axes=(0,) * (len(args) - num_shared) + (None,) * num_shared)(*args)
    if placement not in ("loop", "waves"):
        raise ValueError(f"`placement` must be one of {PLACEMENTS}; got {placement!r}.")

    def looped(*args):  # one run after another on the device: no batched (grouped) convolutions
        per_run, shared = args[: len(args) - num_shared], args[len(args) - num_shared:]
        r = jax.tree.leaves(per_run[0])[0].shape[0]
        outs = [fn(*jax.tree.map(lambda x, i=i: x[i], per_run), *shared) for i in range(r)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return looped


def make_runs_train_step(graphdef, optimizer, objective, mesh, *, placement: str):
    """``step(state, diverged, batch, hparams) -> (state, diverged, metrics)`` over stacked runs.

    ``state`` and ``hparams`` carry a leading runs axis sharded over the mesh axis ``"runs"``; the
    batch is shared by every run and sharded over ``"data"`` (each run's gradient is averaged over
    its ``"data"`` devices by the compiler; runs never exchange anything). Inside a device the local
    runs are ``jax.vmap``-ed (``placement="vmap"``: one batched program, the win on GPU/TPU) or
    run one after another (``"loop"``). With one run per device both are the plain step.

    A run whose loss or gradient is not finite is frozen (:func:`guarded_train_step_fn`) and
    ``diverged`` (``[R]`` bool) stays set; the other runs go on.
    """
    local = _over_local_runs(guarded_train_step_fn(graphdef, optimizer, objective), placement, num_shared=1)
    runs = jax.P(RUNS_AXIS)

    def step(state, diverged, batch, hparams):
        return jax.shard_map(local, mesh=mesh, in_specs=(runs, runs, runs, jax.P()), out_specs=(runs, runs, runs),
                             axis_names={RUNS_AXIS})(state, diverged, hparams, batch)

    return jax.jit(step, donate_argnums=(0, 1))


def make_runs_eval_step(graphdef, objective, mesh, *, placement: str):
    """``eval_step(state, batch, weights, hparams) -> metrics [R, ...]`` over stacked runs."""
    one = eval_step_fn(graphdef, objective)
    local = _over_local_runs(lambda s, hp, b, w: one(s, b, w, hp), placement, num_shared=2)
    runs = jax.P(RUNS_AXIS)

    def step(state, batch, weights, hparams):
        return jax.shard_map(local, mesh=mesh, in_specs=(runs, runs, jax.P(), jax.P()), out_specs=runs,
                             axis_names={RUNS_AXIS})(state, hparams, batch, weights)

    return jax.jit(step)
