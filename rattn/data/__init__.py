"""Input pipelines: tfds array_record data sources fed by grain, with no TensorFlow.

    config.data = data_config()
    info = dataset_info(config.data)
    train_iter = make_train_iterator(config.data, global_batch_size=128, seed=0)
    eval_ds = make_eval_iterator(config.data, global_batch_size=500)
"""

from rattn.data.config import data_config
from rattn.data.datasets import DatasetInfo
from rattn.data.datasets import DatasetNotFoundError
from rattn.data.datasets import data_dir
from rattn.data.datasets import dataset_info
from rattn.data.device import model_input
from rattn.data.device import normalise
from rattn.data.noise import symmetric_label_noise
from rattn.data.pipeline import describe
from rattn.data.pipeline import make_eval_iterator
from rattn.data.pipeline import make_train_iterator
from rattn.data.pipeline import measure_throughput

__all__ = [
    'DatasetInfo',
    'DatasetNotFoundError',
    'data_config',
    'data_dir',
    'dataset_info',
    'describe',
    'make_eval_iterator',
    'make_train_iterator',
    'measure_throughput',
    'model_input',
    'normalise',
    'symmetric_label_noise',
]
