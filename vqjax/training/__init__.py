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
    usable_cores,
    use_cpu_cores_as_devices,
)
from vqjax.training._metrics import MetricsWriter, read_metrics
from vqjax.training._state import TrainState, init_train_state
from vqjax.training._steps import (
    PLACEMENTS,
    auto_micro_batches,
    make_eval_step,
    make_runs_eval_step,
    make_runs_train_step,
    make_train_step,
    micro_batch_value_and_grad,
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
    "CONFIG_RULES",
    "DATA_AXIS",
    "PLACEMENTS",
    "RUNS_AXIS",
    "SCHEDULES",
    "Evaluation",
    "HParams",
    "Member",
    "MetricsWriter",
    "NonFiniteLossError",
    "Objective",
    "Reporter",
    "Task",
    "TrainState",
    "any_of",
    "apply_overrides",
    "auto_micro_batches",
    "boolean",
    "checkpoint_manager",
    "default_cache_dir",
    "default_placement",
    "evaluate",
    "flag",
    "group_members",
    "init_train_state",
    "int_sequence",
    "integer",
    "learning_rate_schedule",
    "load_model",
    "make_eval_step",
    "make_members",
    "make_mesh",
    "make_runs_eval_step",
    "make_runs_train_step",
    "make_sweep_mesh",
    "make_train_step",
    "maybe_initialize_distributed",
    "member_name",
    "micro_batch_value_and_grad",
    "nested",
    "number",
    "one_of",
    "parse_sweep",
    "path",
    "problems",
    "product",
    "read_metrics",
    "replicate",
    "satisfies",
    "saved_config",
    "sequence",
    "shard_batch",
    "string",
    "summarize",
    "sweep_mesh_shape",
    "train_and_evaluate",
    "train_group",
    "train_sweep",
    "unchecked_fields",
    "unknown_rules",
    "usable_cores",
    "use_compilation_cache",
    "use_cpu_cores_as_devices",
    "validate",
    "values",
    "within",
    "write_json",
    "zipped",
]
