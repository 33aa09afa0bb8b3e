"""Training: train state, jitted and sharded steps, the loop, checkpoints, metrics.

    from rattn import train
    metrics = train.train_and_evaluate(config, workdir)        # train (or resume) a config
    model, variables, config = train.load_trained(workdir)     # best checkpoint, for inference
    state, train_step = train.create_train_and_step(config)    # benchmarks: no data touched

Lower-level pieces for custom loops: ``make_mesh`` / ``shard_batch`` (1-D data
mesh, global batches), ``build_model``, ``init_train_state`` /
``create_train_state``, ``make_train_step`` / ``make_eval_step``, ``Checkpointer``.
"""

from rattn.train.build import (ConfigError, build_model, check_batch_sizes, check_config,
                               create_train_and_step, init_train_state, make_tx)
from rattn.train.checkpoint import CheckpointError, Checkpointer, DamagedCheckpointError
from rattn.train.optim import make_lr_schedule, make_optimizer
from rattn.train.state import (TrainState, abstract_train_state, batch_sharded,
                               create_train_state, make_mesh, replicated, shard_batch)
from rattn.train.steps import make_eval_step, make_train_step
from rattn.train.trained import evaluate_workdir, load_trained
from rattn.train.trainer import TrainingDiverged, TrainingPreempted, evaluate, train_and_evaluate

__all__ = [
    'CheckpointError', 'Checkpointer', 'ConfigError', 'DamagedCheckpointError', 'TrainState',
    'TrainingDiverged', 'TrainingPreempted',
    'abstract_train_state', 'batch_sharded', 'build_model', 'check_batch_sizes',
    'check_config', 'create_train_and_step', 'create_train_state', 'evaluate',
    'evaluate_workdir', 'init_train_state', 'load_trained', 'make_eval_step',
    'make_lr_schedule', 'make_mesh', 'make_optimizer', 'make_train_step', 'make_tx',
    'replicated', 'shard_batch', 'train_and_evaluate',
]
