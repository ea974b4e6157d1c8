"""The jitted steps: one run's train and eval steps, and the same over a runs axis (sweeps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vqjax.training._mesh import RUNS_AXIS
from vqjax.training._state import TrainState, eval_key, step_key

PLACEMENTS = ("vmap", "loop", "waves")


def train_step_fn(graphdef, optimizer: Callable[[dict], optax.GradientTransformation], objective) -> Callable:
    """The unjitted ``step(state, batch, hparams) -> (state, metrics)`` of one run.

    ``optimizer(hparams)`` builds the optax transformation inside the trace (so a learning rate in
    ``hparams`` may be a per-run array). The loss is differentiated with respect to the
    ``nnx.Param`` variables; the model is in training mode and variables the objective changes in
    place (``rest``: EMA codebooks, batch statistics) are carried over.
    """
    guarded = guarded_train_step_fn(graphdef, optimizer, objective)

    def step(state: TrainState, batch: Any, hparams: dict):
        new, _, metrics = guarded(state, None, hparams, batch)
        return new, metrics

    return step


def guarded_train_step_fn(graphdef, optimizer, objective) -> Callable:
    """``step(state, diverged, hparams, batch) -> (state, diverged, metrics)``: one run's step that
    freezes a diverging run (``diverged=None``: no guard).

    ``diverged`` ([] bool) becomes set when the loss or the gradient is not finite; from then on
    the state stays as it was before that step (the last state with a finite loss and gradient).
    The test comes before the update, so XLA fuses the choice into the update's own pass over the
    parameters and optimizer state (a select after the update would cost another pass).
    """

    def step(state: TrainState, diverged, hparams: dict, batch: Any):
        def loss_fn(params):
            # copy=True: fresh Variables of this trace, which the objective may update in place (flax#5050)
            model = nnx.merge(graphdef, params, state.rest, copy=True)
            model.train()  # NNX training mode: dropout on, running statistics (EMA codebooks) update
            loss, metrics = objective(model, batch, key=step_key(state), step=state.step, hparams=hparams)
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, rest)

        (loss, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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


def make_train_step(graphdef, tx: optax.GradientTransformation, objective):
    """``train_step(state, batch, hparams=None) -> (state, metrics)``: one run, jitted, ``state`` donated.

    ``objective(model, batch, key=..., step=..., hparams=...)`` returns ``(loss, metrics)``; the
    key is ``fold_in(seed key, step)``. ``hparams`` (default ``{}``) is passed to the objective.
    """
    step = jax.jit(train_step_fn(graphdef, lambda hp: tx, objective), donate_argnums=0)
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
