"""Input pipelines: tfds array_record data sources fed by grain, with no TensorFlow.

    config.data = data_config()
    plan = DataPlan(config.data)           # checks the config, opens each split once
    info = plan.info
    train_iter = plan.train_iterator(global_batch_size=128, seed=0)
    eval_ds = plan.eval_iterator(global_batch_size=500)  # the test split (eval_split)
    val_ds = plan.eval_iterator(global_batch_size=500, split=MINIVAL)  # held out of train
"""

from rattn.data.config import check_data_config
from rattn.data.config import data_config
from rattn.data.datasets import DataConfigError
from rattn.data.datasets import DatasetInfo
from rattn.data.datasets import DatasetNotFoundError
from rattn.data.datasets import data_dir
from rattn.data.device import model_input
from rattn.data.device import normalise
from rattn.data.noise import symmetric_label_noise
from rattn.data.pipeline import MINIVAL
from rattn.data.pipeline import DataPlan
from rattn.data.pipeline import choose_validation
from rattn.data.pipeline import dataset_info
from rattn.data.pipeline import make_eval_iterator
from rattn.data.pipeline import make_train_iterator
from rattn.data.pipeline import measure_throughput
from rattn.data.pipeline import split_batch

__all__ = [
    'DataConfigError',
    'DataPlan',
    'DatasetInfo',
    'DatasetNotFoundError',
    'check_data_config',
    'data_config',
    'data_dir',
    'dataset_info',
    'MINIVAL',
    'choose_validation',
    'make_eval_iterator',
    'make_train_iterator',
    'measure_throughput',
    'split_batch',
    'model_input',
    'normalise',
    'symmetric_label_noise',
]
