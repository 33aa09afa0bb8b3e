r"""Trains (or resumes) a CIFAR / Fashion-MNIST config.

  python -m experiments.cifar --config experiments/configs/ran_cifar.py:model=ran56_cifar \
      --workdir /tmp/ran56
  python -m experiments.cifar --config experiments/configs/tiny.py --workdir /tmp/tiny \
      --config.num_train_steps=100 --config.schedule.base_lr=0.05

Rerunning the same command with the same --workdir resumes from its latest
checkpoint. The workdir receives config.json, metrics.jsonl, TensorBoard
events (tensorboard/) and checkpoints/ (rattn/train/workdir.py). Multi-process
runs: see rattn/train/distributed.py (--coordinator_address, --num_processes,
--process_id, or the cluster's environment).
"""

from absl import flags

from rattn.train import cli

flags.adopt_module_key_flags(cli)  # --config, --workdir and the multi-process flags

if __name__ == '__main__':
  cli.run(cli.train_main)
