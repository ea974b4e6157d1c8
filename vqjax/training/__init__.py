"""Training on a device mesh: one run, or a sweep of many runs in one program; exact resume.

The parts, one idea a module:

- ``_task``: :class:`Task`, the one contract between an experiment and the loop;
- ``_state``: :class:`TrainState`, a plain pytree (a model made pure with ``nnx.split``);
- ``_steps``: the jitted train and eval steps, of one run or over a runs axis;
- ``_mesh``: the ``("data",)`` mesh of one run and the ``("runs", "data")`` mesh of a sweep;
- ``_checkpoints``: Orbax checkpoints of the state and the Grain iterator, ``load_model``;
- ``_evaluation``: evaluation over a whole split (padded, masked batches);
- ``_metrics``: ``metrics.jsonl`` and TensorBoard;
- ``_loop``: :func:`train_and_evaluate`, one run;
- ``_sweep_spec`` and ``_sweep``: declaring a sweep and training it group by group;
- ``_config``: the rules a config's values are checked against when a program starts.
"""

from vqjax.training._cache import default_cache_dir, use_compilation_cache
from vqjax.training._checkpoints import checkpoint_manager, load_model, saved_config, write_json
from vqjax.training._config import (
    CONFIG_RULES,
    any_of,
    boolean,
    flag,
    int_sequence,
    integer,
    nested,
    number,
    one_of,
    path,
    problems,
    satisfies,
    sequence,
    string,
    unchecked_fields,
    unknown_rules,
    validate,
    within,
)
from vqjax.training._evaluation import evaluate, summarize
from vqjax.training._loop import NonFiniteLossError, train_and_evaluate
from vqjax.training._mesh import (
    DATA_AXIS,
    RUNS_AXIS,
    make_mesh,
    make_sweep_mesh,
    maybe_initialize_distributed,
    replicate,
    shard_batch,
    sweep_mesh_shape,
    use_cpu_cores_as_devices,
)
from vqjax.training._metrics import MetricsWriter, read_metrics
from vqjax.training._state import TrainState, init_train_state
from vqjax.training._steps import (
    PLACEMENTS,
    make_eval_step,
    make_runs_eval_step,
    make_runs_train_step,
    make_train_step,
)
from vqjax.training._sweep import (
    Member,
    default_placement,
    group_members,
    make_members,
    train_group,
    train_sweep,
)
from vqjax.training._sweep_spec import apply_overrides, member_name, parse_sweep, product, values, zipped
from vqjax.training._task import (
    SCHEDULES,
    Evaluation,
    HParams,
    Objective,
    Reporter,
    Task,
    learning_rate_schedule,
)

__all__ = [
    "Task", "Evaluation", "Objective", "Reporter", "HParams", "learning_rate_schedule", "SCHEDULES",
    "TrainState", "init_train_state", "make_train_step", "make_eval_step", "make_runs_train_step",
    "make_runs_eval_step", "PLACEMENTS",
    "make_mesh", "make_sweep_mesh", "sweep_mesh_shape", "replicate", "shard_batch", "DATA_AXIS", "RUNS_AXIS",
    "maybe_initialize_distributed", "use_cpu_cores_as_devices",
    "default_cache_dir", "use_compilation_cache",
    "checkpoint_manager", "load_model", "saved_config", "write_json",
    "evaluate", "summarize", "MetricsWriter", "read_metrics",
    "NonFiniteLossError", "train_and_evaluate",
    "values", "product", "zipped", "parse_sweep", "member_name", "apply_overrides",
    "CONFIG_RULES", "validate", "problems", "unchecked_fields", "unknown_rules", "flag", "integer", "number",
    "boolean", "one_of", "string", "path", "sequence", "int_sequence", "any_of", "satisfies", "nested", "within",
    "Member", "make_members", "group_members", "default_placement", "train_group", "train_sweep",
]
