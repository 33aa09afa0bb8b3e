r"""Parameter and multiply-add counts of registered models, beside the papers' figures.

  python -m experiments.summary                          # the attention ResNet-50s
  python -m experiments.summary --group all --markdown   # every model, as Markdown
  python -m experiments.summary --models resnet18,preact_resnet164

Each model is counted at its registered input size and class count
(``rattn.models.summary.model_summary``): trainable parameters (BatchNorm
statistics excluded) and the multiply-adds of one forward pass, exactly, from
shapes alone (``jax.eval_shape`` / ``jax.make_jaxpr``; nothing is compiled or
run), in a few seconds for the default group. The papers' figures and their
sources are the registry's metadata (``MODELS.info(name)``); "added" is the
count above the model's ``backbone`` (what the attention modules cost).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import app, flags

from rattn.models import MODELS, create_model, list_models
from rattn.models.summary import count_params, format_count, format_table, model_summary
from rattn.train import cli

ATTENTION_RESNETS = ('resnet50', 'se_resnet50', 'cbam_resnet50', 'eca_resnet50',
                     'eca_resnet50_official', 'sge_resnet50')


def _natural_order(names: Sequence[str]) -> List[str]:
  # preact_resnet20 before preact_resnet110.
  key = lambda name: [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', name)]
  return sorted(names, key=key)


def _family(family: str) -> Callable[[], List[str]]:
  return lambda: _natural_order([n for n in list_models() if MODELS.entry(n).family == family])


GROUPS: Dict[str, Callable[[], List[str]]] = {
    'attention_resnets': lambda: list(ATTENTION_RESNETS),
    'resnets': _family('resnet'),
    'preact': _family('preact_resnet'),
    'ran': _family('ran'),
    'all': lambda: _natural_order(list_models()),
}

COLUMNS = ('model', 'input', 'params', 'paper params', 'Δ params', 'MACs', 'paper MACs',
           'Δ MACs', 'added params', 'paper added', 'source')


def _paper(value: Optional[float], scale: float, unit: str) -> str:
  # As the paper rounds it (25.6M, 24.37M), not re-rounded to a fixed precision.
  return '' if value is None else f'{value / scale:g}{unit}'


def _delta(ours: int, paper: Optional[float]) -> str:
  if not paper:
    return ''
  percent = (ours - paper) / paper * 100
  return '0.00%' if abs(percent) < 0.005 else f'{percent:+.2f}%'


def summary_rows(names: Sequence[str]) -> List[Dict[str, Any]]:
  """One row per model: our counts, the paper's figures and the differences."""
  rows, backbone_params = [], {}
  for name in names:
    info = MODELS.info(name)
    num_classes = info.get('num_classes', 1000)
    image_size = info.get('image_size', 224)
    counts = model_summary(name, num_classes=num_classes, image_size=image_size)
    backbone_params[name] = counts['params']
    row = {
        'model': name, 'input': f'{image_size}x{image_size}', 'params': f'{counts["params"]:,}',
        'paper params': _paper(info.get('paper_params'), 1e6, 'M'),
        'Δ params': _delta(counts['params'], info.get('paper_params')),
        'MACs': format_count(counts['macs']),
        'paper MACs': _paper(info.get('paper_macs'), 1e9, 'G'),
        'Δ MACs': _delta(counts['macs'], info.get('paper_macs')),
        'source': info.get('source', ''), 'note': info.get('note', ''),
    }
    backbone = info.get('backbone')
    if backbone:
      if backbone not in backbone_params:
        backbone_params[backbone] = count_params(
            create_model(backbone, num_classes=num_classes),
            (1, image_size, image_size, 3))
      row['added params'] = f'{counts["params"] - backbone_params[backbone]:,}'
      added = info.get('paper_added_params')
      row['paper added'] = '' if added is None else f'{added:,}'
    rows.append(row)
  return rows


def _plain_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> str:
  cells = [list(columns)] + [[str(r.get(c, '')) for c in columns] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
  return '\n'.join('  '.join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def render(rows: Sequence[Dict[str, Any]], markdown: bool) -> str:
  """The table, then the notes (one line per distinct note, naming its models)."""
  table = format_table(rows, COLUMNS) if markdown else _plain_table(rows, COLUMNS)
  notes: Dict[str, List[str]] = {}
  for row in rows:
    if row['note']:
      notes.setdefault(row['note'], []).append(row['model'])
  lines = [table, '',
           'params: trainable parameters; MACs: multiply-adds of one forward pass at the '
           "given input (convolutions and matrix products); Δ: ours vs the paper's figure."]
  lines += [f'{"- " if markdown else "  "}{", ".join(models)}: {note}'
            for note, models in notes.items()]
  return '\n'.join(lines)


FLAGS = cli.command_flags()  # this command's own flags (see rattn.train.cli)
_MODELS = flags.DEFINE_list('models', None, 'Registered model names, comma-separated.',
                            flag_values=FLAGS)
_GROUP = flags.DEFINE_enum('group', 'attention_resnets', sorted(GROUPS),
                           'A predefined set of models (ignored with --models).', flag_values=FLAGS)
_MARKDOWN = flags.DEFINE_bool('markdown', False, 'Print a Markdown table.', flag_values=FLAGS)


@cli.command(FLAGS)
def main(argv: Sequence[str]) -> int:
  """Prints the table the flags ask for (call it with ``cli.call``)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if _MODELS.value:
    names = [n.strip().lower() for n in _MODELS.value if n.strip()]
    for name in names:
      try:
        MODELS.get(name)
      except ValueError as e:
        raise app.UsageError(str(e)) from None
  else:
    names = GROUPS[_GROUP.value]()
  if not names:
    raise app.UsageError(f'no models registered in group {_GROUP.value!r}.')
  print(render(summary_rows(names), _MARKDOWN.value))
  return 0


if __name__ == '__main__':
  cli.run(main)
