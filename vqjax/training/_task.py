"""The one contract between an experiment and the loop: :class:`Task`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import optax
from flax import nnx

# hparams: {config path: [] array}, e.g. {"model.beta": 0.25, "optimizer.learning_rate": 1e-3}.
HParams = Mapping[str, jax.Array]


class Objective(Protocol):
    """``objective(model, batch, *, key, step, hparams, weights=None) -> (loss [], metrics)``.

    ``hparams`` holds the task's hyperparameters as ``[]`` arrays (traced: in a sweep each run has
    its own values); ``step`` the number of updates done so far (for schedules inside the
    objective); ``weights`` the ``[B]`` 0/1 mask of padded evaluation rows. Metrics to be summed
    over a whole split are per-batch sums under ``"sum/<name>"`` (and ``"weight"``), code counts
    under ``"counts"`` / ``"counts_<name>"``.
    """

    def __call__(self, model: nnx.Module, batch: dict, *, key: jax.Array, step: jax.Array, hparams: HParams,
                 weights: jax.Array | None = None) -> tuple[jax.Array, dict]: ...


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One more pass over the test split after training, e.g. an importance-weighted bound.

    Its ``sum/`` metrics join the test summary. Keep ``batch_size`` small enough that one step
    takes seconds.
    """

    objective: Objective
    batch_size: int


# A reporter draws pictures or computes extra summary entries after training, on process 0:
# reporter(model, test_source, workdir, summary) -> dict of extra summary entries, or None.
Reporter = Callable[[nnx.Module, Any, str, dict], "dict | None"]


def default_optimizer(learning_rate: optax.Schedule, hparams: HParams) -> optax.GradientTransformation:
    """Adam with the run's learning-rate schedule."""
    del hparams
    return optax.adam(learning_rate)


@dataclasses.dataclass(frozen=True)
class Task:
    """What an experiment's ``build(config)`` hands the loop.

    Attributes:
      model: ``model(rngs) -> nnx.Module``, the architecture with fresh parameters.
      objective: the training loss and metrics (:class:`Objective`); evaluation on the test split
        uses it too, with the model in ``eval()`` mode.
      hparams: the hyperparameters the objective and the optimizer read, ``{config path: value}``.
        The loop adds ``"optimizer.learning_rate"``. They reach the step as arrays, so a sweep
        over any of them shares one compiled program.
      state_hparams: config paths whose values live in the model's state (an EMA decay, a
        dead-code threshold held as ``nnx.Variable``): sweepable like ``hparams``, not passed.
      optimizer: ``optimizer(schedule, hparams) -> optax.GradientTransformation``; built inside the
        step, so the schedule's peak (and anything read from ``hparams``) may differ per run.
      init: ``init(model, batch, key)`` adjusts the fresh model in place from a first training
        batch (e.g. a codebook fitted to encoder outputs) before training starts.
      evaluations: more passes over the test split after training, by name.
      reporters: pictures and extra summary entries after training (:data:`Reporter`).
      legacy_defaults: settings added to vqjax with a default that changes what a run does, each
        with the value that reproduces a run saved before the setting existed (``{config path: value}``):
        resuming such a run with another value is refused, naming the flag (a setting the saved config
        lacks is otherwise taken at its default, which must then keep the old behaviour).
      per_example: the objective is a mean over the batch of per-example terms (no batch-level
        statistic such as an MMD, no state it updates such as an EMA codebook), so the batch's
        gradient is the mean of its parts' gradients: the loop may then split each step's batch
        into concurrent micro-batches (``config.train.micro_batches``, on CPU by default).
    """

    model: Callable[[nnx.Rngs], nnx.Module]
    objective: Objective
    hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)
    state_hparams: tuple[str, ...] = ()
    optimizer: Callable[[optax.Schedule, HParams], optax.GradientTransformation] = default_optimizer
    init: Callable[[nnx.Module, dict, jax.Array], None] | None = None
    evaluations: Mapping[str, Evaluation] = dataclasses.field(default_factory=dict)
    reporters: Sequence[Reporter] = ()
    per_example: bool = False
    legacy_defaults: Mapping[str, object] = dataclasses.field(default_factory=dict)


SCHEDULES = ("constant", "cosine")
LEARNING_RATE = "optimizer.learning_rate"


def learning_rate_schedule(optimizer_config, steps: int, peak: float | jax.Array | None = None) -> optax.Schedule:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``steps``.

    ``optimizer_config`` has ``learning_rate``, ``warmup_steps`` and optionally ``schedule``
    (``"constant"``, the default, or ``"cosine"``). ``peak`` (default ``learning_rate``) may be a
    traced array: a sweep's per-run learning rate.
    """
    peak = float(optimizer_config.learning_rate) if peak is None else peak
    warmup = int(optimizer_config.warmup_steps)
    kind = optimizer_config.get("schedule", "constant")
    if kind not in SCHEDULES:
        raise ValueError(f"`config.optimizer.schedule` must be one of {SCHEDULES}; got {kind!r}.")
    if kind == "cosine":  # the shape with peak 1, scaled: optax's schedules want Python floats
        unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(steps, warmup + 1), end_value=0.0)
    else:
        unit = optax.linear_schedule(0.0, 1.0, max(1, warmup)) if warmup else optax.constant_schedule(1.0)
    return lambda count: peak * unit(count)


def task_hparams(task: Task, config) -> dict[str, float]:
    """The task's hyperparameters plus the learning rate, as float32-able Python numbers."""
    return {LEARNING_RATE: float(config.optimizer.learning_rate), **{k: float(v) for k, v in task.hparams.items()}}
