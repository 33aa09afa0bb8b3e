r"""Trains (or resumes) an ImageNet config: the same main as experiments.cifar.

  python -m experiments.imagenet --config experiments/configs/ran_imagenet.py:model=ran56 \
      --workdir /tmp/ran56_imagenet
  # several hosts (each runs the same command; or let SLURM / the TPU pod say it):
  python -m experiments.imagenet --config experiments/configs/ran_imagenet.py \
      --workdir gs://bucket/ran92 --coordinator_address host0:1234 --num_processes 4 \
      --process_id $RANK

ImageNet (tfds 'imagenet2012') must already be prepared in $TFDS_DATA_DIR (or
--config.data.data_dir): tfds cannot download it; place ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ and build it once
on a machine with TensorFlow. Each process reads its own shard of the data.
Rerunning the same command with the same --workdir resumes from its latest
checkpoint.
"""

from absl import flags

from rattn.train import cli

flags.adopt_module_key_flags(cli)  # --config, --workdir and the multi-process flags

if __name__ == '__main__':
  cli.run(cli.train_main)
