r"""The papers' claims as studies: grids of ordinary training runs, per scale.

Run one with ``python -m experiments.study NAME --workdir DIR [--scale S]``.
Every study here is data (rattn/study/spec.py): its axes, the config overrides
of each option, the scales, and the paper's figures where we found them.

Scales:
  smoke  seconds a cell for a pre-act ResNet: 2 steps on the CIFAR-10 subset at
         16x16, tiny widths; only for tests of the machinery (the accuracy means
         nothing). Its RAN cells are dominated by XLA compilation (1-2 min each
         on a 2-core CPU), so the CLI test runs label_noise, whose smoke scale
         keeps only the ResNet.
  cpu    Fashion-MNIST (60k/10k) at 16x16, quarter-width Attention-56/92
         (CIFAR layout; 70,758 / 119,206 parameters at 28x28) and the
         same-size pre-act ResNet-20 (widths 8/16/32), 200 steps of batch 64
         (a fifth of an epoch; 57,000 training images, 3,000 held out for
         validation), one validation eval and one eval on all 10,000 test
         images, both at the end. On this
         project's 2-core CPU most of a RAN cell is start-up, data decoding
         and XLA compilation (at load 2-5: ~20 s to start and decode, about
         1 min (Attention-56) to 1.5 min (Attention-92) to compile, ~20 s for
         the eval). Measured with 3 seeds on the idle machine: 6 min
         (ran_vs_resnet, 6 cells) to 22 min (attention_layers, 21 cells) a
         study; docs/studies.md has the tables and wall times.
  gpu    Fashion-MNIST at 28x28 (the full CIFAR-10 is not in the offline data;
         where it is, --override=data.dataset=cifar10 trains on it),
         full-width CIFAR-layout models, one epoch (470 steps of batch 128),
         8 cells side by side. Not run yet: no accelerator was available.
         The budget, estimated from the H200
         measurements in ../shared/gpu/README.md (ran92_cifar, batch 256,
         float32: 7,108 img/s and 30 s to compile; bf16 52.9 s):
           per cell ~20 s start-up + 30-60 s compile, overlapped 8 at a time;
           arl_vs_nal (16 cells with 2 seeds): 4 x 470 x 128 images per depth
             at ~12k / 7k / 4.9k / 3.9k img/s (Attention-56/92/128/164, scaled
             from Attention-92 by trunk modules) = 170 s of device time, plus
             2 waves of ~60 s start-up and compile: ~290 s;
           label_noise (16 cells): 8 x 60k images at ~7k img/s (Attention-92)
             + 8 x 60k at ~9k img/s (pre-act ResNet-164) = 120 s, plus ~120 s:
             ~240 s. Two studies: ~9 min of the 15 that two must fit in.
         These are estimates until the first run: its progress lines (ETA
         from finished cells) show whether to lower num_train_steps.

The paper's figures (test error %, CIFAR-10) printed beside ours are only
those found in a source: Attention-92 4.99% (Wang et al. 2017, the CIFAR-10
result of Attention-92 with attention residual learning and mixed attention)
and pre-act ResNet-164 5.46% (He et al. 2016, Identity Mappings), both as
quoted by public re-implementations (docs/studies.md names them).
The ablation tables' per-depth / per-noise figures could not be retrieved
here, so they are not printed.
"""

from __future__ import annotations

from typing import Dict

from rattn.study import Axis, Option, Paper, Scale, Study

RAN_CONFIG = 'experiments/configs/fashion_mnist_ran.py'
RESNET_CONFIG = 'experiments/configs/fashion_mnist_resnet.py'
SMOKE_RAN_CONFIG = 'experiments/configs/cifar10_subset_ran.py'
SMOKE_RESNET_CONFIG = 'experiments/configs/cifar10_subset_resnet.py'

# Run length and logging per scale; every config has these fields.
_SMOKE = {'data.image_size': 16, 'batch_size': 16, 'eval_batch_size': 512,
          'num_train_steps': 2, 'schedule.warmup_steps': 0, 'log_every': 1, 'eval_every': 2,
          'checkpoint_every': 2}
_CPU = {'data.image_size': 16, 'batch_size': 64, 'eval_batch_size': 1000,
        'num_train_steps': 200, 'schedule.warmup_steps': 20, 'log_every': 20,
        'eval_every': 200, 'checkpoint_every': 100}
_GPU = {'batch_size': 128, 'eval_batch_size': 1000, 'num_train_steps': 470,
        'schedule.warmup_steps': 50, 'log_every': 47, 'eval_every': 470,
        'checkpoint_every': 470}

# Model size per scale. The RAN configs' model_kwargs take a width multiplier; the
# ResNet configs' take the stage widths.
_RAN_WIDTH = {'smoke': {'model_kwargs.width': 0.0625}, 'cpu': {'model_kwargs.width': 0.25},
              'gpu': {'model_kwargs.width': 1.0}}
_RESNET_WIDTHS = {'smoke': {'model_kwargs.widths': (4, 8, 16)},
                  'cpu': {'model_kwargs.widths': (8, 16, 32)},
                  'gpu': {'model_kwargs.widths': (16, 32, 64)}}
# The ResNet configs declare depth and bottleneck (so that attention_layers can change them):
# a cell that switches to another pre-act ResNet sets both to that model's.
_PREACT = {'preact_resnet20': {'model_kwargs.depth': 20, 'model_kwargs.bottleneck': False},
           'preact_resnet56': {'model_kwargs.depth': 56, 'model_kwargs.bottleneck': False},
           'preact_resnet164': {'model_kwargs.depth': 164, 'model_kwargs.bottleneck': True}}
_NOTES = {
    'smoke': 'smoke scale: 2 steps at 16x16 (tests only; accuracy is meaningless)',
    'cpu': 'images resized to 16x16, batch 64, cosine schedule; quarter-width models',
    'gpu': 'native 28x28, batch 128, cosine schedule; full-width models',
}


def _scale(scale: str, config: str, overrides: Dict, option_overrides: Dict = None,
           only: Dict = None, note: str = '') -> Scale:
  return Scale(config=config, overrides=overrides, option_overrides=option_overrides or {},
               only=only or {}, note=_NOTES[scale] + note,
               seeds=1 if scale == 'smoke' else 2,
               accelerator_parallel=8 if scale == 'gpu' else 4)


def _ran_scales(only: Dict[str, Dict] = None) -> Dict[str, Scale]:
  """Scales of a study whose cells are all RAN configs."""
  only = only or {}
  return {scale: _scale(scale, config, {**run, **_RAN_WIDTH[scale]}, only=only.get(scale))
          for scale, config, run in (('smoke', SMOKE_RAN_CONFIG, _SMOKE),
                                     ('cpu', RAN_CONFIG, _CPU), ('gpu', RAN_CONFIG, _GPU))}


def _ran_vs_resnet_scales(models: Dict[str, Dict[str, str]],
                          only: Dict[str, Dict] = None) -> Dict[str, Scale]:
  """Scales of a study comparing RANs and ResNets: each option picks its model and config."""
  only = only or {}
  scales = {}
  for scale, ran, resnet, run in (('smoke', SMOKE_RAN_CONFIG, SMOKE_RESNET_CONFIG, _SMOKE),
                                  ('cpu', RAN_CONFIG, RESNET_CONFIG, _CPU),
                                  ('gpu', RAN_CONFIG, RESNET_CONFIG, _GPU)):
    option_overrides = {
        label: ({'config': ran, 'model': model, **_RAN_WIDTH[scale]} if model.startswith('ran')
                else {'config': resnet, 'model': model, **_PREACT[model],
                      **_RESNET_WIDTHS[scale]})
        for label, model in models[scale].items()}
    scales[scale] = _scale(scale, ran, run, option_overrides, only.get(scale))
  return scales


_DEPTHS = (56, 92, 128, 164)
ARL_VS_NAL = Study(
    name='arl_vs_nal',
    claim=('attention residual learning, (1 + M) T, keeps improving with depth while naive '
           'attention learning, M T, degrades (Wang et al. 2017, Sec. 4.1).'),
    axes=(Axis('depth', tuple(Option(f'ran{d}', {'model': f'ran{d}_cifar'}, x=d)
                              for d in _DEPTHS)),
          Axis('learning', (Option('arl', {'model_kwargs.residual_learning': True}),
                            Option('nal', {'model_kwargs.residual_learning': False})))),
    scales=_ran_scales(only={'smoke': {'depth': ('ran56', 'ran92')},
                                 'cpu': {'depth': ('ran56', 'ran92')}}),
    x_axis='depth', x_label='depth (Attention-N)',
    paper=Paper(source='Wang et al. 2017 (arXiv 1704.06904), CIFAR-10 result of Attention-92',
                errors={('ran92', 'arl'): 4.99}, setting='full CIFAR-10, 160k steps of batch 64'),
)

MASK_TYPE = Study(
    name='mask_type',
    claim=('mixed attention (a sigmoid per channel and position) beats channel and spatial '
           'attention (Wang et al. 2017, Sec. 4.1).'),
    axes=(Axis('mask', tuple(Option(t, {'model_kwargs.attention_type': t})
                             for t in ('mixed', 'channel', 'spatial'))),),
    scales=_ran_scales(),  # the configs' own Attention-56
)

RAN_VS_RESNET = Study(
    name='ran_vs_resnet',
    claim=('a Residual Attention Network beats a pre-activation ResNet of about the same size '
           '(Attention-92, 1.9M params: 4.99% vs pre-act ResNet-164, 1.7M: 5.46% on CIFAR-10).'),
    axes=(Axis('model', tuple(Option(m) for m in ('ran56', 'preact20', 'ran92',
                                                  'preact164'))),),
    scales=_ran_vs_resnet_scales(
        {'smoke': {'ran56': 'ran56_cifar', 'preact20': 'preact_resnet20'},
         'cpu': {'ran56': 'ran56_cifar', 'preact20': 'preact_resnet20'},
         'gpu': {'ran56': 'ran56_cifar', 'preact20': 'preact_resnet20', 'ran92': 'ran92_cifar',
                 'preact164': 'preact_resnet164'}},
        only={'smoke': {'model': ('ran56', 'preact20')}, 'cpu': {'model': ('ran56', 'preact20')}}),
    paper=Paper(source='Wang et al. 2017 (Attention-92); He et al. 2016 (pre-act ResNet-164)',
                errors={('ran92',): 4.99, ('preact164',): 5.46},
                setting='full CIFAR-10, ~160 epochs'),
)

_NOISE = (10, 30, 50, 70)
LABEL_NOISE = Study(
    name='label_noise',
    claim=('the Residual Attention Network stays ahead of a ResNet as symmetric label noise '
           'grows from 10% to 70% (Wang et al. 2017, Sec. 4.1: Attention-92 vs ResNet-164).'),
    axes=(Axis('model', (Option('ran'), Option('resnet'))),
          Axis('noise', tuple(Option(f'noise{n}', {'data.label_noise': n / 100}, x=n)
                              for n in _NOISE))),
    scales=_ran_vs_resnet_scales(
        {'smoke': {'ran': 'ran56_cifar', 'resnet': 'preact_resnet20'},
         'cpu': {'ran': 'ran56_cifar', 'resnet': 'preact_resnet20'},
         'gpu': {'ran': 'ran92_cifar', 'resnet': 'preact_resnet164'}},
        # The smoke scale (the CLI test) runs only the ResNet: it compiles in seconds, a RAN in
        # minutes on a busy 2-core CPU.
        only={'smoke': {'model': ('resnet',), 'noise': ('noise10', 'noise50')},
              'cpu': {'noise': ('noise10', 'noise50')}}),
    x_axis='noise', x_label='symmetric label noise (% of training labels)',
)

_ATTENTIONS = ('none', 'se', 'cbam', 'eca', 'sge', 'coord', 'danet')
ATTENTION_LAYERS = Study(
    name='attention_layers',
    claim=('each attention layer improves its backbone at a small cost in parameters and '
           'multiply-adds (SE, CBAM, ECA, SGE, coordinate attention, DANet papers).'),
    axes=(Axis('attention', tuple(Option(a, {'model_kwargs.attention': '' if a == 'none' else a})
                                  for a in _ATTENTIONS)),),
    # A bottleneck backbone: its units end at 4x the stage width (64/128/256 channels), so
    # every layer's default hyper-parameters fit (SGE's 64 groups, SE's C/16 hidden units).
    scales={scale: _scale(scale, config, {**run, 'model_kwargs.bottleneck': True,
                                          'model_kwargs.widths': (16, 32, 64),
                                          'model': model, 'model_kwargs.depth': depth},
                          note=f'; backbone: {label}')
            for scale, config, run, model, depth, label in (
                ('smoke', SMOKE_RESNET_CONFIG, _SMOKE, 'preact_resnet20', 11,
                 'pre-act bottleneck ResNet-11 (preact_resnet20 with depth=11, bottleneck)'),
                ('cpu', RESNET_CONFIG, _CPU, 'preact_resnet20', 11,
                 'pre-act bottleneck ResNet-11 (preact_resnet20 with depth=11, bottleneck)'),
                ('gpu', RESNET_CONFIG, _GPU, 'preact_resnet164', 164, 'pre-act ResNet-164'))},
    baseline='none',
)

STUDIES = {s.name: s for s in (ARL_VS_NAL, MASK_TYPE, RAN_VS_RESNET, LABEL_NOISE,
                               ATTENTION_LAYERS)}
SCALES = ('smoke', 'cpu', 'gpu')
