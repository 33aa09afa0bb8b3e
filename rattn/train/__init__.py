"""Training: the run plan, train state, jitted and sharded steps, the loop, checkpoints.

    from rattn import train
    metrics = train.train_and_evaluate(config, workdir)        # train (or resume) a config
    model, variables, config = train.load_trained(workdir)     # best checkpoint, for inference
    plan = train.make_plan(config, image_shape=(32, 32, 3), num_classes=10)  # no data read
    state, train_step = plan.init_state(), plan.train_step()   # e.g. for benchmarks

Lower-level pieces for custom loops: ``make_mesh`` / ``shard_batch`` (1-D data
mesh, global batches), ``create_train_state``, ``make_train_step`` /
``make_eval_step`` / ``evaluate``, ``Checkpointer``; the workdir's files are
named in ``rattn.train.workdir``.
"""

from rattn.train.checkpoint import CheckpointError, Checkpointer, DamagedCheckpointError
from rattn.train.optim import make_lr_schedule, make_optimizer
from rattn.train.plan import ConfigError, RunPlan, check_config, make_plan, model_entry
from rattn.train.state import (RunKeys, TrainState, abstract_train_state, batch_sharded,
                               create_train_state, make_mesh, replicated, shard_batch)
from rattn.train.steps import evaluate, make_eval_step, make_train_step
from rattn.train.trained import evaluate_workdir, load_trained
from rattn.train.trainer import TrainingDiverged, TrainingPreempted, train_and_evaluate
from rattn.train.workdir import WorkdirError

__all__ = [
    'CheckpointError', 'Checkpointer', 'ConfigError', 'DamagedCheckpointError', 'RunKeys', 'RunPlan', 'TrainState',
    'TrainingDiverged', 'TrainingPreempted', 'WorkdirError',
    'abstract_train_state', 'batch_sharded', 'check_config', 'create_train_state', 'evaluate',
    'evaluate_workdir', 'load_trained', 'make_eval_step', 'make_lr_schedule', 'make_mesh',
    'make_optimizer', 'make_plan', 'make_train_step', 'model_entry', 'replicated', 'shard_batch',
    'train_and_evaluate',
]
