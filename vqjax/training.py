"""Data-parallel training on a device mesh, with Orbax checkpoints that resume exactly.

The model is a Flax NNX module made pure with ``nnx.split`` / ``nnx.merge``: the whole train
state is the plain pytree :class:`TrainState`, so Orbax saves it, shardings apply to it and
``jax.vmap`` can stack copies of it. One ``jax.jit``-ed, donated step does forward, backward
and the optax update; the batch is sharded over the mesh axis ``"data"`` and the parameters
are replicated, so the gradient all-reduce is the compiler's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

__all__ = [
    "TrainState",
    "maybe_initialize_distributed",
    "use_cpu_cores_as_devices",
    "make_mesh",
    "init_train_state",
    "make_train_step",
    "make_eval_step",
    "shard_batch",
    "replicate",
    "NonFiniteLossError",
    "train_and_evaluate",
    "load_model",
    "saved_config",
]

DATA_AXIS = "data"
# An objective maps (model, batch, *, key, step, weights=None) to (scalar loss, metrics dict).
Objective = Callable[..., tuple[jax.Array, dict]]


class TrainState(NamedTuple):
    """Everything a step needs and a checkpoint saves; a plain pytree."""

    step: jax.Array  # [] int32
    params: Any  # nnx.State of the nnx.Param variables
    rest: Any  # nnx.State of any other variables (batch statistics, EMA codebooks, ...)
    opt_state: Any  # optax state
    key: jax.Array  # [2] uint32 raw PRNG key data (jax.random.key_data)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when the environment describes a multi-process job.

    Set ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``), or run
    under SLURM / a Cloud TPU pod where JAX detects the cluster itself and
    ``VQJAX_DISTRIBUTED=1`` is set. A single-process run does nothing.
    """
    if jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("VQJAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def use_cpu_cores_as_devices(batch_sizes: tuple[int, ...], *, max_devices: int | None = None) -> int:
    """Expose one XLA:CPU device per core, so data parallelism replaces intra-op threading.

    XLA's CPU backend parallelises a small convolution poorly across threads; splitting the batch
    over one single-threaded device per core (the same sharded step as on a pod) runs the VQ-VAE
    step ~1.8× faster on 2 cores. Uses the largest device count ≤ the usable cores that divides
    every batch size. Only the CPU backend is affected (GPU/TPU runs are unchanged), and it must
    be called before JAX's first computation; afterwards it does nothing and returns 0.

    Use with care: XLA:CPU still runs some kernels (matrix multiplies) on its shared Eigen pool and
    runs a collective's continuation on a pool thread, so one device can block the thread the other
    needs and the gradient all-reduce deadlocks (XLA aborts after 40 s). We have seen it with an MLP
    VAE, and with the VQ-VAE using FSQ or residual VQ on a loaded machine; so every experiment keeps
    this off by default. A run that aborts this way resumes from its last checkpoint.

    Returns:
      The number of CPU devices configured, or 0 if JAX had already started.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = min(cores, max_devices or cores)
    while n > 1 and any(b % n for b in batch_sizes):
        n -= 1
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialised: leave them as they are
        return 0
    if n > 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    return n


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: every device of every process).

    The axis is ``Auto``: shardings of intermediate values (the code gather, the gradient
    all-reduce) are left to the compiler, as in classic ``jit`` data parallelism.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (jax.sharding.AxisType.Auto,), devices=devices)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Place every array of ``tree`` on all devices of ``mesh`` (replicated)."""
    sharding = jax.NamedSharding(mesh, jax.P())
    return jax.device_put(tree, sharding)


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
    """Process-local ``[b, ...]`` NumPy arrays -> global arrays sharded over ``"data"``.

    Each process passes its own rows; the global batch is their concatenation in process order.
    """
    sharding = jax.NamedSharding(mesh, jax.P(DATA_AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, *, seed: int):
    """Split ``model`` into ``(graphdef, TrainState)`` with a fresh optimizer state."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    key = jax.random.key_data(jax.random.key(seed))
    state = TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params), key)
    return graphdef, state


def _step_key(state: TrainState) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)


_EVAL_STREAM = 0x7FFFFFFF  # evaluation keys: a stream apart from the training steps'


def _eval_key(state: TrainState) -> jax.Array:
    """One key for every evaluation batch and checkpoint of a run (see :func:`make_eval_step`)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), _EVAL_STREAM)


def make_train_step(graphdef, tx: optax.GradientTransformation, objective: Objective):
    """``train_step(state, batch) -> (state, metrics)``: jitted, with ``state`` donated.

    ``objective(model, batch, key=..., step=...)`` returns ``(loss, metrics)``; the key is
    ``fold_in(seed key, step)`` and ``step`` the number of updates done so far (for schedules
    inside the objective, such as an annealed capacity). The step differentiates the
    loss with respect to the ``nnx.Param`` variables and applies ``tx``. The model is in training
    mode (``model.train()``); variables the objective changes in place (``rest``: EMA codebooks,
    batch statistics) are carried over.
    """

    def train_step(state: TrainState, batch: Any):
        def loss_fn(params):
            # copy=True: fresh Variables of this trace, which the objective may update in place (flax#5050)
            model = nnx.merge(graphdef, params, state.rest, copy=True)
            model.train()  # NNX training mode: dropout on, running statistics (EMA codebooks) update
            loss, metrics = objective(model, batch, key=_step_key(state), step=state.step)
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, rest)

        (_, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        new = TrainState(state.step + 1, params, rest, opt_state, state.key)
        return new, metrics

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef, objective: Objective):
    """``eval_step(state, batch, weights) -> metrics``: jitted, no update, the model in ``eval()`` mode.

    The objective's key depends on the run's seed only: the same for every batch and every
    checkpoint. :func:`evaluate` adds ``batch["index"]``, each example's index in the split; an
    objective folds it into the key for randomness that belongs to an example (a binarized test
    image is then the same whatever the batch size or the objective), or its first entry for
    randomness that belongs to the batch.
    """

    def eval_step(state: TrainState, batch: Any, weights: jax.Array):
        model = nnx.merge(graphdef, state.params, state.rest)
        model.eval()  # NNX evaluation mode: deterministic, running statistics frozen
        _, metrics = objective(model, batch, key=_eval_key(state), step=state.step, weights=weights)
        return metrics

    return jax.jit(eval_step)


# --------------------------------------------------------------------------- the loop


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "/" not in k and jnp.ndim(v) == 0}


def _parse(line: str) -> dict | None:
    """A metrics line, or None for a line cut short by a kill."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


class _MetricsLog:
    """``metrics.jsonl`` plus TensorBoard event files; process 0 only; rewinds on resume."""

    def __init__(self, workdir: str, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                rows = [(line, _parse(line)) for line in f]
            # Drop what was logged after the checkpoint, and a finished run's test line (redone).
            kept = [line for line, r in rows
                    if r and (r["step"] < start_step or (r["step"] == start_step and r["split"] != "test"))]
            with open(self.path, "w") as f:
                f.writelines(kept)
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        for k, v in values.items():
            self.writer.add_scalar(f"{split}/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def _checkpoint_manager(workdir: str, config):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.train.get("keep_checkpoints", 3),
        save_interval_steps=1,  # the loop decides when
        create=True,
        cleanup_tmp_directories=True,  # a save cut short by a kill is removed on restart
    )
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def _save(mgr, state: TrainState, data_iter) -> None:
    import grain
    import orbax.checkpoint as ocp

    step = int(state.step)
    mgr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)
        ),
    )


def _restore(mgr, step: int, target: TrainState, data_iter) -> TrainState:
    import grain
    import orbax.checkpoint as ocp

    restored = mgr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(data_iter)
        ),
    )
    return restored["state"]


def saved_config(workdir: str) -> dict | None:
    """The config a :func:`train_and_evaluate` run in ``workdir`` was started with, as a dict, or None."""
    for name, key in (("config.json", None), ("summary.json", "config")):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            return saved if key is None else saved.get(key)
    return None


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """``{"encoder/conv1/kernel": shape}`` of a state or of its checkpoint metadata."""
    def name(path) -> str:
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        return "/".join(p for p in parts if p != "value")

    return {name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def load_model(workdir: str, model_fn: Callable[[nnx.Rngs], nnx.Module], *, step: int | None = None) -> nnx.Module:
    """The model a :func:`train_and_evaluate` run saved in ``workdir``: ``model_fn``'s architecture
    with the parameters and other variables of its latest checkpoint (or of ``step``). Only those are
    read (a partial restore), so it works whatever optimizer the run used.

    Raises ``FileNotFoundError`` when ``workdir`` holds no checkpoint and ``ValueError`` naming the
    first variable whose shape (or presence) differs between the checkpoint and ``model_fn``'s model.
    """
    import orbax.checkpoint as ocp

    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = sorted(ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False)).all_steps()) \
        if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f"No checkpoint in {directory}: train the model there first (or point to the "
                                "workdir of a run that saved checkpoints).")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"No checkpoint of step {step} in {directory}; it has steps {steps}.")
    graphdef, params, rest = nnx.split(model_fn(nnx.Rngs(0)), nnx.Param, ...)
    target = {"params": params, "rest": rest}
    saved = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), "state"))
    saved = getattr(saved, "item_metadata", saved)
    for part in ("params", "rest"):
        want, got = _shapes(target[part]), _shapes(saved[part])
        for name in sorted(set(want) | set(got)):
            if want.get(name) != got.get(name):
                raise ValueError(
                    f"The checkpoint in {directory} (step {step}) does not fit the model: {part}/{name} is "
                    f"{got.get(name, 'missing')} in the checkpoint and {want.get(name, 'absent')} in the model. "
                    "Build the model with the config the checkpoint was trained with.")
    mgr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    restore = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                     partial_restore=True)  # params and rest; not the optimizer state
    state = mgr.restore(step, args=ocp.args.Composite(state=restore))["state"]
    mgr.close()
    # Host (NumPy) values, as train_and_evaluate's after_training gets: usable on any device or mesh.
    return nnx.merge(graphdef, jax.device_get(state["params"]), jax.device_get(state["rest"]))


def evaluate(eval_step, state: TrainState, source, mesh, *, batch_size: int, desc: str | None = None) -> dict:
    """Metrics over the whole of ``source``: totals divided by the number of examples.

    ``sum/<name>`` metrics become ``<name>`` means; ``counts`` (``[K]`` or ``[S, K]``) becomes
    ``perplexity``, ``used_fraction`` and ``dead_codes``; ``counts_<name>`` (one more codebook, e.g.
    VQ-VAE-2's ``counts_top``) becomes ``perplexity_<name>`` and ``used_<name>``.

    The last batch is padded to ``batch_size`` and masked, so every example counts once. Each
    batch gets ``"index"``: int32 ``[B]`` indices unique to each example, on one host its position
    in ``source`` (padding rows get indices past the end). With ``desc``, a progress bar on process 0.
    """
    from tqdm import tqdm

    from vqjax import data as data_lib

    it = data_lib.make_pipeline(
        source, batch_size=batch_size, seed=0, shuffle=False, repeat=False, drop_remainder=False
    )
    local = batch_size // jax.process_count()
    totals: dict = {}
    bar = tqdm(total=-(-len(source) // batch_size), desc=desc, dynamic_ncols=True,
               disable=desc is None or jax.process_index() != 0)
    for batch_index, batch in enumerate(it):
        n = batch["image"].shape[0]
        weights = np.zeros((local,), np.float32)
        weights[:n] = 1.0
        if n < local:
            batch = jax.tree.map(lambda x, pad=local - n: np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]), batch)
        first = (batch_index * jax.process_count() + jax.process_index()) * local
        batch = dict(batch, index=np.arange(first, first + local, dtype=np.int32))
        m = eval_step(state, shard_batch(batch, mesh), shard_batch(weights, mesh))
        bar.update(1)
        keep = {k: v for k, v in m.items() if k.startswith(("sum/", "counts")) or k == "weight"}
        totals = keep if not totals else jax.tree.map(jnp.add, totals, keep)
    bar.close()
    from vqjax import quantizers

    weight = float(totals["weight"])
    out = {k[4:]: float(v) / weight for k, v in totals.items() if k.startswith("sum/")}
    if "counts" in totals:  # [K], or [S, K] per stage of residual VQ: means over stages
        counts = np.asarray(totals["counts"])
        out["perplexity"] = float(np.mean(quantizers.perplexity(counts)))
        out["used_fraction"] = float(np.mean(counts > 0))
        out["dead_codes"] = int(np.sum(counts == 0))
        out["_counts"] = counts
    for key in sorted(k for k in totals if k.startswith("counts_")):  # one codebook each: counts_top, ...
        name, counts = key[len("counts_"):], np.asarray(totals[key])
        out[f"perplexity_{name}"] = float(quantizers.perplexity(counts))
        out[f"used_{name}"] = float(np.mean(counts > 0))
    out["num_examples"] = int(weight)
    return out


def _plot_usage_history(workdir: str, steps: int, test: dict, *, num_codes: int) -> None:
    """``perplexity.png``: perplexity of the training batches and of each evaluation, from ``metrics.jsonl``."""
    from vqjax import viz

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [r for r in map(_parse, f) if r and "perplexity" in r]
    series = {}
    for split, label in (("train", "training batches"), ("eval", "test set")):
        pts = [(r["step"], r["perplexity"]) for r in rows if r["split"] == split]
        if split == "eval":
            pts.append((steps, test["perplexity"]))
        if pts:
            series[label] = tuple(map(np.asarray, zip(*pts)))
    viz.save_history(os.path.join(workdir, "perplexity.png"), series, ylabel="perplexity",
                     title=f"codebook perplexity (dashed: K = {num_codes})", hline=num_codes)


SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(optimizer_config, steps: int) -> optax.Schedule:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``steps``.

    ``optimizer_config`` has ``learning_rate``, ``warmup_steps`` and optionally ``schedule``
    (``"constant"``, the default, or ``"cosine"``).
    """
    lr, warmup = float(optimizer_config.learning_rate), int(optimizer_config.warmup_steps)
    kind = optimizer_config.get("schedule", "constant")
    if kind not in SCHEDULES:
        raise ValueError(f"`config.optimizer.schedule` must be one of {SCHEDULES}; got {kind!r}.")
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=0.0)
    return optax.linear_schedule(0.0, lr, max(1, warmup)) if warmup else optax.constant_schedule(lr)


def train_and_evaluate(
    config,
    workdir: str,
    *,
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    objective: Objective,
    reconstruct: Callable[[nnx.Module, jax.Array], jax.Array] | None = None,
    init_fn: Callable[[nnx.Module, dict, jax.Array], None] | None = None,
    eval_objectives: dict[str, tuple[Objective, int]] | None = None,
    after_training: Callable[[nnx.Module, Any, str], dict | None] | None = None,
    optimizer: Callable[[optax.Schedule], optax.GradientTransformation] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train, checkpoint, resume, evaluate on the test split, draw pictures, write a summary.

    ``config`` is an ``ml_collections.ConfigDict`` with ``seed``, ``data`` (``dataset``,
    ``idx_dir``, ``tfds_data_dir``, ``batch_size``, ``eval_batch_size``), ``optimizer``
    (``learning_rate``, ``warmup_steps``) and ``train`` (``steps``, ``log_every``,
    ``checkpoint_every``, and optionally ``eval_every``: evaluate on the test split every so many
    steps and log it as split ``"eval"``). Running again with the same ``workdir`` resumes from the latest
    checkpoint; a finished run only evaluates and reports. ``init_fn(model, batch, key)``, if
    given, adjusts the fresh model in place from a first batch of ``batch_size`` training
    examples (the same on every process; e.g. a codebook fitted to encoder outputs) before
    training starts.

    After training the test split is evaluated with ``objective`` and then with each
    ``(objective, batch_size)`` of ``eval_objectives`` (e.g. an expensive importance-weighted bound;
    their metrics join the ``test`` summary). Keep such a batch small enough that one step takes
    seconds: XLA:CPU aborts a collective whose devices arrive more than 40 s apart. On process 0, ``reconstruct(model, x)`` (if given) draws
    ``reconstructions.png`` and ``after_training(model, test_source, workdir)`` (if given) may draw
    more pictures and return extra summary entries. ``optimizer(schedule)`` builds the optimizer
    from the learning-rate schedule (default ``optax.adam``; e.g. Adam chained with a proximal step).
    Returns the summary dict.
    """
    from tqdm import tqdm

    from vqjax import data as data_lib
    from vqjax import viz

    maybe_initialize_distributed()
    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:  # what load_model's callers rebuild the model from
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, default=str)
    steps, batch_size = int(config.train.steps), int(config.data.batch_size)
    if steps < 1:
        raise ValueError(f"`config.train.steps` must be >= 1; got {steps}.")
    mesh = make_mesh()
    if batch_size % mesh.size:
        raise ValueError(
            f"`config.data.batch_size`={batch_size} must be divisible by the number of devices {mesh.size}."
        )
    eval_batch_size = int(config.data.eval_batch_size)
    if eval_batch_size % mesh.size:
        raise ValueError(
            f"`config.data.eval_batch_size`={eval_batch_size} must be divisible by the number of "
            f"devices {mesh.size}."
        )

    src_kw = {"dataset": config.data.dataset, "idx_dir": config.data.idx_dir or None,
                  "tfds_data_dir": config.data.tfds_data_dir or None, "log": log if is_main else (lambda s: None)}
    train_src = data_lib.get_source(split="train", **src_kw)
    test_src = data_lib.get_source(split="test", **dict(src_kw, log=lambda s: None))
    train_iter = data_lib.make_pipeline(train_src, batch_size=batch_size, seed=config.seed)

    tx = (optimizer or optax.adam)(learning_rate_schedule(config.optimizer, steps))
    model = model_fn(nnx.Rngs(config.seed))
    if init_fn is not None:  # a resumed run overwrites this with the checkpoint
        order = np.random.default_rng(config.seed).permutation(len(train_src))[:batch_size]
        images = np.stack([train_src[int(i)]["image"] for i in np.sort(order)])
        init_fn(model, {"image": images.astype(np.float32) / 255.0},
                jax.random.fold_in(jax.random.key(config.seed), 1))
    graphdef, state = init_train_state(model, tx, seed=config.seed)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    del model

    with jax.set_mesh(mesh):
        state = replicate(state, mesh)
        mgr = _checkpoint_manager(workdir, config)
        latest = mgr.latest_step()
        if latest is not None:
            state = _restore(mgr, latest, state, train_iter)
            state = replicate(state, mesh)
            log(f"Resumed from the checkpoint at step {latest} in {workdir}.")
        start = int(state.step)
        train_step = make_train_step(graphdef, tx, objective)
        eval_step = make_eval_step(graphdef, objective)
        mlog = _MetricsLog(workdir, start, is_main)

        log_every, ckpt_every = int(config.train.log_every), int(config.train.checkpoint_every)
        eval_every = int(config.train.get("eval_every", 0))
        pending: list[dict] = []
        t_interval, n_interval, train_seconds = time.perf_counter(), 0, 0.0
        bar = tqdm(total=steps, initial=start, desc="train", disable=not is_main or start >= steps,
                   dynamic_ncols=True, mininterval=1.0)
        step = start
        while step < steps:
            batch = shard_batch(next(train_iter), mesh)
            state, metrics = train_step(state, batch)
            step += 1
            n_interval += 1
            pending.append(_scalars(metrics))
            bar.update(1)
            if step % log_every == 0 or step % ckpt_every == 0 or step == steps:
                mean = {k: float(v) for k, v in jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *pending).items()}
                losses = np.array([float(m["loss"]) for m in pending])
                pending = []
                elapsed = time.perf_counter() - t_interval
                train_seconds += elapsed
                mean["images_per_sec"] = n_interval * batch_size / elapsed
                t_interval, n_interval = time.perf_counter(), 0
                # A finite loss does not prove the update after it was finite: check both.
                finite = np.all(np.isfinite(losses)) and bool(_all_finite(state.params))
                if not finite:
                    bar.close()
                    mgr.wait_until_finished()
                    good = mgr.latest_step()
                    kept = (f"The last good checkpoint (step {good}) is kept in {workdir}/checkpoints; lower the "
                            "learning rate (--config.optimizer.learning_rate) and run again to resume from it."
                            if good is not None else
                            f"No checkpoint was saved before it; lower the learning rate "
                            f"(--config.optimizer.learning_rate) and start again (remove {workdir}).")
                    raise NonFiniteLossError(
                        f"Non-finite loss or parameters at or before step {step} (loss={losses[-1]}); stopping. {kept}"
                    )
                mlog.write(step, "train", mean)
                bar.set_postfix(loss=f"{mean['loss']:.2f}", img_s=f"{mean['images_per_sec']:.0f}")
                if step % ckpt_every == 0 or step == steps:
                    _save(mgr, state, train_iter)
            if eval_every and step % eval_every == 0 and step < steps:
                t_eval = time.perf_counter()
                ev = evaluate(eval_step, state, test_src, mesh, batch_size=eval_batch_size)
                ev.pop("_counts", None)
                mlog.write(step, "eval", ev)
                t_interval += time.perf_counter() - t_eval  # evaluation time is not training time
        bar.close()
        mgr.wait_until_finished()
        mgr.close()

        ev = evaluate(eval_step, state, test_src, mesh, batch_size=eval_batch_size)
        counts = ev.pop("_counts", None)
        for name, (extra, extra_batch_size) in (eval_objectives or {}).items():
            if extra_batch_size % mesh.size:
                raise ValueError(f"The batch size {extra_batch_size} of eval objective {name!r} must be divisible "
                                 f"by the number of devices {mesh.size}.")
            more = evaluate(make_eval_step(graphdef, extra), state, test_src, mesh, batch_size=extra_batch_size,
                            desc=f"test {name}")
            more.pop("_counts", None)
            ev.update({k: v for k, v in more.items() if k != "num_examples"})
        mlog.write(steps, "test", ev)
        mlog.close()

        summary = {
            "steps": steps,
            "resumed_from": latest,
            "trained_steps_this_run": steps - start,
            "train_seconds_this_run": round(train_seconds, 2),
            "images_per_sec": round((steps - start) * batch_size / train_seconds, 1) if train_seconds else None,
            "wall_seconds_this_run": None,
            "data_source": train_src.name,
            "train_examples": len(train_src),
            "test_examples": len(test_src),
            "num_devices": mesh.size,
            "num_params": num_params,
            "test": ev,
            "config": config.to_dict(),
        }
        if is_main:
            n_show = min(64, len(test_src))
            x = np.stack([test_src[i]["image"] for i in range(n_show)]).astype(np.float32) / 255.0
            model = nnx.merge(graphdef, jax.device_get(state.params), jax.device_get(state.rest))
            if reconstruct is not None:
                x_hat = np.asarray(jax.jit(reconstruct)(model, jnp.asarray(x)))
                viz.save_png(os.path.join(workdir, "reconstructions.png"),
                             viz.reconstruction_grid(x, x_hat, ncols=16))
            if after_training is not None:
                summary.update(after_training(model, test_src, workdir) or {})
            if counts is not None:  # a quantizer's usage: perplexity over training, final histogram
                _plot_usage_history(workdir, steps, ev, num_codes=counts.shape[-1])
                viz.save_usage_plot(
                    os.path.join(workdir, "codebook_usage.png"), counts,
                    title=f"test-set code usage: perplexity {ev['perplexity']:.1f}, "
                          f"{ev['used_fraction']:.0%} of {counts.size} codes used",
                )
            summary["wall_seconds_this_run"] = round(time.perf_counter() - t_start, 2)
            with open(os.path.join(workdir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2, default=str)
    return summary
