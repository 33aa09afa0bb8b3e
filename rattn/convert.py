"""PyTorch ``state_dict`` -> rattn variables (``params`` and ``batch_stats``).

Which checkpoints map onto which rattn model (``CHECKPOINT_LAYOUTS``):

* ``resnet18`` ... ``resnet152``: torchvision's ``resnet18`` ... ``resnet152``.
* ``se_resnet50``: timm's ``seresnet50`` (``layerN.M.se.fc1/fc2``, 1x1 convs).
* ``cbam_resnet50``: Jongchan/attention-module ``MODELS/model_resnet.py`` +
  ``cbam.py`` (``layerN.M.cbam.ChannelGate.mlp.1/3``, ``...SpatialGate.spatial.conv/bn``),
  or a timm ResNet-50 with CBAM blocks (``layerN.M.se.channel.fc1``..., see ``_from_timm``).
* ``eca_resnet50_official`` (and ``eca_resnet50`` where the kernel sizes agree):
  BangguWu/ECANet ``models/eca_resnet.py`` (``layerN.M.eca.conv``, a Conv1d); timm's ECA
  ResNet-50 (``layerN.M.se.conv``, kernel sizes 5, 5, 5, 7) onto ``eca_resnet50``.
* ``sge_resnet50``: implus/PytorchInsight ``classification/models/imagenet/resnet_sge.py``
  (``layerN.M.sge.weight/bias``, shape (1, G, 1, 1)).
* ``ran*``: a PyTorch module whose attribute names are rattn's own module names
  (``stage1_attention1.mask_branch.down1_unit1.conv1.weight``), as the parity
  tests' reference RAN in ``tests/torch_reference/ran.py`` is written.

Layout conversions: conv OIHW -> HWIO, Conv1d (O, I, K) -> (K, I, O), Linear
(out, in) -> (in, out) (and a 1x1 conv onto a Dense kernel, as timm's SE),
BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var
(``num_batches_tracked`` is ignored). Single-attention-layer state dicts (the
authors' modules on their own) convert with ``convert_attention_state_dict``.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
from flax import traverse_util
from flax.core import unfreeze

StateDict = Dict[str, np.ndarray]
# A torch key -> (rattn module path, leaf name); None when the key is not this layout's.
Translator = Callable[[str], Optional[Tuple[Tuple[str, ...], str]]]


class ConversionError(ValueError):
  """A state dict that does not fit the rattn model it is converted onto."""


# --- Reading ----------------------------------------------------------------


# The file names a checkpoint is read from: safetensors without torch; the rest with torch.
TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.pth.tar', '.tar')
SUFFIXES = ('.safetensors',) + TORCH_SUFFIXES
_SUFFIX_TEXT = ', '.join(SUFFIXES[:-1]) + ' or ' + SUFFIXES[-1]

# Where training-checkpoint containers keep the weights: the plain ones first (timm's
# checkpoint saver, torchvision's ImageNet example, DeiT...), then the EMA ones.
PLAIN_ENTRIES = ('state_dict', 'model', 'module', 'net', 'network')
EMA_ENTRIES = ('state_dict_ema', 'model_ema', 'ema_state_dict', 'ema')

# Objects that training checkpoints hold beside the weights and that are safe to rebuild
# (they run no code of the file's choosing): timm saves its argparse Namespace ('args'),
# numpy scalars for metrics ('metric').
_HARMLESS_GLOBALS = ('argparse.Namespace', 'numpy.core.multiarray.scalar',
                     'numpy._core.multiarray.scalar', 'numpy.dtype', 'numpy.dtypes.')


def check_source(path: str | os.PathLike) -> str:
  """``path`` as a string if it names a file, else a ``ConversionError`` saying what to give."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConversionError(f'No checkpoint file at {path!r}; give the path of a {_SUFFIX_TEXT} '
                          'file.')
  return path


def _allowed_globals(torch: Any, path: str) -> List[Any]:
  """The harmless classes ``path`` pickles (to allow), or a ConversionError for any other:
  a pickled whole model, whose loading would run code named by the file."""
  names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
  unsafe = [n for n in names if not n.startswith(_HARMLESS_GLOBALS)]
  if unsafe:
    modules = [n for n in unsafe if not n.startswith(('builtins.', 'collections.'))]
    shown = ', '.join(unsafe[:4]) + (f' and {len(unsafe) - 4} more' if len(unsafe) > 4 else '')
    what = ('a pickled whole model (or other Python objects)' if modules
            else 'Python objects beyond tensors')
    raise ConversionError(
        f'{path!r} holds {what}, not only a state dict: it pickles {shown}. Loading it would '
        'run code that the file names, so it is not loaded (torch.load(weights_only=True) '
        'refuses it too). Where you trust the file and can import the code that defined '
        'the model, save its weights alone and convert those: python -c "import torch; '
        f"m = torch.load({path!r}, weights_only=False); torch.save(m.state_dict() if "
        "hasattr(m, 'state_dict') else m, 'weights.pth')\" (then --from weights.pth).")
  allowed = []
  for name in names:
    module, _, attr = name.rpartition('.')
    try:
      allowed.append(getattr(importlib.import_module(module), attr))
    except (ImportError, AttributeError):
      pass  # not importable here: torch then refuses it, reported below
  if 'numpy.dtype' in names:  # a pickled dtype also names its class, e.g. Float64DType
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')]
  return allowed


def _unwrap(tensors: Any, path: str, ema: bool, notes: Optional[List[str]]) -> Any:
  """The weights inside a training-checkpoint container (``PLAIN_ENTRIES``, or with ``ema``
  ``EMA_ENTRIES``); ``tensors`` itself when it holds tensors at its top level."""
  entries, unwrapped, top = (EMA_ENTRIES if ema else PLAIN_ENTRIES), False, tensors
  while isinstance(tensors, Mapping):
    found = next((e for e in entries if isinstance(tensors.get(e), Mapping)), None)
    if found is None:
      break
    others = [e for e in EMA_ENTRIES if e != found and isinstance(tensors.get(e), Mapping)]
    if notes is not None:
      notes.append(f"its {found!r} entry" + (
          f' (it also holds EMA weights, {others[0]!r}: pass --ema to convert those)'
          if others and not ema else ''))
    tensors, unwrapped = tensors[found], True
  if ema and not unwrapped:
    tensors = top
    keys = list(tensors)[:8] if isinstance(tensors, Mapping) else []
    raise ConversionError(
        f'{path!r} has no EMA weights: none of the entries {", ".join(EMA_ENTRIES)} (its '
        f'top-level keys: {", ".join(map(str, keys)) or "none"}). Convert its plain weights '
        '(without --ema), or give the checkpoint that holds the EMA weights.')
  return tensors


def read_state_dict(path: str | os.PathLike, *, ema: bool = False,
                    notes: Optional[List[str]] = None) -> StateDict:
  """The tensors of a ``.safetensors`` file (numpy, no torch needed) or of a torch file
  (``TORCH_SUFFIXES``, read with ``torch.load(weights_only=True)``).

  A training checkpoint is unwrapped: its weights under ``'state_dict'``,
  ``'model'``... (``PLAIN_ENTRIES``; with ``ema``, the EMA weights under
  ``'state_dict_ema'``, ``'model_ema'``... instead), beside harmless objects
  such as timm's argparse ``'args'``; the ``module.`` prefix of
  ``nn.DataParallel``/DDP checkpoints (as the authors' ECA, CBAM and SGE
  releases are saved) is dropped. A pickled whole model is refused with what
  to do. ``notes``, if given, receives a phrase naming the entry read.
  """
  path = check_source(path)
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    tensors: Mapping[str, Any] = load_file(path)
    if ema:
      raise ConversionError(f'{path!r} is a safetensors file of one set of weights; --ema '
                            'applies to training checkpoints that hold EMA weights beside them.')
  elif path.endswith(TORCH_SUFFIXES):
    try:
      import torch
    except ImportError:
      raise ConversionError(
          f'Reading {path!r} needs PyTorch, which is not installed. Install it (pip install '
          'torch) or convert the file to .safetensors where torch is available '
          '(safetensors.torch.save_file(torch.load(path), "model.safetensors")).') from None
    try:
      allowed = _allowed_globals(torch, path)
      with torch.serialization.safe_globals(allowed):
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    except ConversionError:
      raise
    except Exception as e:  # torch raises many types for a file it cannot read
      first = (str(e).strip().splitlines() or [''])[0][:200]
      raise ConversionError(f'{path!r} cannot be read as a PyTorch checkpoint '
                            f'({type(e).__name__}: {first}). Give a file written by '
                            'torch.save (or a .safetensors file).') from None
    tensors = _unwrap(loaded, path, ema, notes)
    if not isinstance(tensors, Mapping):
      raise ConversionError(f'{path!r} holds a {type(tensors).__name__}, not a state dict; '
                            'save model.state_dict() rather than the model.')
    tensors = {k: v.detach().cpu().numpy() for k, v in tensors.items()
               if isinstance(v, torch.Tensor)}
    if not tensors:
      raise ConversionError(f'{path!r} holds no tensors at its top level nor under '
                            f'{", ".join(PLAIN_ENTRIES)}; give the file of a state dict.')
  else:
    raise ConversionError(f'Unknown checkpoint format {path!r}: expected {_SUFFIX_TEXT}.')
  if tensors and all(k.startswith('module.') for k in tensors):
    tensors = {k[len('module.'):]: v for k, v in tensors.items()}
  return {k: np.asarray(v) for k, v in tensors.items()}


# --- Key layouts --------------------------------------------------------------

# Each attention family's torch sub-keys (the authors' attribute names) -> rattn's.
# A value is (rattn module path, leaf rename or None).
_ATTENTION_KEYS: Dict[str, Dict[str, Tuple[str, Optional[str]]]] = {
    'se': {'fc1': ('fc1', None), 'fc2': ('fc2', None)},  # timm SEModule
    'cbam': {'ChannelGate.mlp.1': ('fc1', None), 'ChannelGate.mlp.3': ('fc2', None),
             'SpatialGate.spatial.conv': ('conv', None), 'SpatialGate.spatial.bn': ('bn', None)},
    'cbam_channel': {'mlp.1': ('fc1', None), 'mlp.3': ('fc2', None)},
    'cbam_spatial': {'spatial.conv': ('conv', None), 'spatial.bn': ('bn', None)},
    'eca': {'conv': ('conv', None)},
    'sge': {'': ('', None)},
    'coord': {'conv1': ('conv1', None), 'bn1': ('bn1', None), 'conv_h': ('conv_h', None),
              'conv_w': ('conv_w', None)},
    'danet_position': {'query_conv': ('query', None), 'key_conv': ('key', None),
                       'value_conv': ('value', None), '': ('', None)},
    # The official CAM_Module names its scale gamma; rattn calls it beta.
    'danet_channel': {'': ('', 'beta')},
    # rattn's combined module: a PAM_Module as `pam` and a CAM_Module as `cam`.
    'danet': {'pam.query_conv': ('query', None), 'pam.key_conv': ('key', None),
              'pam.value_conv': ('value', None), 'pam': ('', None), 'cam': ('', 'beta')},
}

# The attribute under which each release keeps its block's attention module.
_BLOCK_ATTENTION_ATTRS = {'se': 'se', 'cbam': 'cbam', 'eca': 'eca', 'sge': 'sge'}


def _split(key: str) -> Tuple[str, str]:
  module, _, leaf = key.rpartition('.')
  return module, leaf


def _attention_translator(attention: str) -> Translator:
  table = _ATTENTION_KEYS[attention]

  def translate(key: str):
    module, leaf = _split(key)
    if module not in table:
      return None
    path, rename = table[module]
    return tuple(p for p in path.split('/') if p), rename or leaf

  return translate


def _resnet_translate(key: str):
  """torchvision / timm / ECANet / attention-module / PytorchInsight ResNet keys."""
  module, leaf = _split(key)
  top = {'conv1': 'stem_conv', 'bn1': 'stem_bn', 'fc': 'fc'}
  if module in top:
    return (top[module],), leaf
  match = re.fullmatch(r'layer(\d+)\.(\d+)\.(.+)', module)
  if not match:
    return None
  block = f'stage{match.group(1)}_block{int(match.group(2)) + 1}'
  rest = match.group(3)
  if re.fullmatch(r'(conv|bn)[123]', rest):
    return (block, rest), leaf
  if rest in ('downsample.0', 'downsample.1'):
    return (block, 'proj_conv' if rest.endswith('0') else 'proj_bn'), leaf
  attr, _, inner = rest.partition('.')
  if attr not in _BLOCK_ATTENTION_ATTRS:
    return None
  found = _attention_translator(_BLOCK_ATTENTION_ATTRS[attr])(f'{inner}.{leaf}'.lstrip('.'))
  return None if found is None else ((block, 'attention') + found[0], found[1])


def _ran_translate(key: str):
  """rattn's own module names, dotted (the parity tests' reference RAN)."""
  module, leaf = _split(key)
  return (tuple(module.split('.')), leaf) if module else None


# model name -> (translator, the checkpoint layout it reads).
CHECKPOINT_LAYOUTS: Dict[str, Tuple[Translator, str]] = {
    **{f'resnet{d}': (_resnet_translate, f'torchvision resnet{d}')
       for d in (18, 34, 50, 101, 152)},
    'se_resnet50': (_resnet_translate, "timm 'seresnet50'"),
    'cbam_resnet50': (_resnet_translate, 'Jongchan/attention-module ResidualNet(ImageNet, 50, '
                      "CBAM), or timm resnet50 with block_args=dict(attn_layer='cbam')"),
    'eca_resnet50_official': (_resnet_translate, 'BangguWu/ECANet eca_resnet50 (k_size 3,5,5,7)'),
    'eca_resnet50': (_resnet_translate, 'BangguWu/ECANet eca_resnet50 with k_size 5,5,5,7, or '
                     "timm resnet50 with block_args=dict(attn_layer='eca')"),
    'sge_resnet50': (_resnet_translate, 'implus/PytorchInsight sge_resnet50'),
    **{name: (_ran_translate, "rattn's module names (tests/torch_reference/ran.py)")
       for name in ('ran56', 'ran92', 'ran128', 'ran164', 'ran56_cifar', 'ran92_cifar',
                    'ran236_cifar', 'ran452_cifar')},
}


# --- Conversion ---------------------------------------------------------------

def _shape(leaf: Any) -> Tuple[int, ...]:
  return tuple(leaf.shape)  # arrays and jax.eval_shape's ShapeDtypeStructs alike


_BN_LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def _target(module: Tuple[str, ...], leaf: str, tensor: np.ndarray,
            flat: Mapping[Tuple[str, ...], Any]) -> Tuple[Tuple[str, ...], np.ndarray]:
  """The rattn variable path for one torch tensor, and the tensor in rattn's layout."""
  is_bn = ('params',) + module + ('scale',) in flat
  if is_bn and leaf in _BN_LEAVES:
    collection, name = _BN_LEAVES[leaf]
    return (collection,) + module + (name,), tensor
  if leaf == 'weight' and ('params',) + module + ('kernel',) in flat:
    kernel_rank = len(_shape(flat[('params',) + module + ('kernel',)]))
    if kernel_rank == 2 and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
      tensor = tensor[:, :, 0, 0]  # a 1x1 conv onto a Dense layer (timm's SE)
    if tensor.ndim == kernel_rank:
      # OIHW -> HWIO, (O, I, K) -> (K, I, O), (out, in) -> (in, out).
      tensor = np.transpose(tensor, tuple(range(2, tensor.ndim)) + (1, 0))
    return ('params',) + module + ('kernel',), tensor
  path = ('params',) + module + (leaf,)
  target = flat.get(path)
  if target is not None and int(np.prod(_shape(target))) == tensor.size:
    tensor = tensor.reshape(_shape(target))  # SGE's (1, G, 1, 1), DANet's (1,) scalars
  return path, tensor


def _listing(title: str, items: List[str], limit: int = 12) -> str:
  shown = items[:limit] + ([f'... and {len(items) - limit} more'] if len(items) > limit else [])
  return f'{title} ({len(items)}):\n  ' + '\n  '.join(shown)


def convert_with(translate: Translator, state_dict: Mapping[str, Any], variables: Mapping[str, Any],
                 what: str = 'the model') -> Dict[str, Any]:
  """``variables`` (a template from ``model.init`` or ``jax.eval_shape``) filled from ``state_dict``.

  Every template leaf must be covered and every tensor used (``num_batches_tracked``
  aside), with matching shapes; otherwise one ``ConversionError`` lists all
  problems. Returns new numpy-valued ``{'params', 'batch_stats'}`` (the template's
  collections), cast to the template's dtypes.
  """
  variables = unfreeze(variables)
  flat = traverse_util.flatten_dict(
      {c: variables[c] for c in ('params', 'batch_stats') if c in variables})
  filled: Dict[Tuple[str, ...], np.ndarray] = {}
  unmatched, misshapen = [], []
  for key, value in state_dict.items():
    if key.endswith('num_batches_tracked'):
      continue
    found = translate(key)
    tensor = np.asarray(value)
    source_shape = tuple(tensor.shape)
    if found is None:
      unmatched.append(f'{key} {source_shape}')
      continue
    path, tensor = _target(found[0], found[1], tensor, flat)
    if path not in flat or path in filled:
      why = 'already filled by another tensor' if path in filled else 'no such variable'
      unmatched.append(f'{key} {source_shape} (-> {"/".join(path)}: {why})')
    elif tuple(tensor.shape) != _shape(flat[path]):
      misshapen.append(f'{key}: {source_shape} -> {"/".join(path)} needs '
                       f'{_shape(flat[path])}')
    else:
      filled[path] = tensor.astype(flat[path].dtype)
  missing = ['/'.join(p) + f' {_shape(v)}' for p, v in flat.items() if p not in filled]
  if unmatched or misshapen or missing:
    parts = [_listing(t, items) for t, items in (
        ('Checkpoint tensors with no place in the model', unmatched),
        ('Tensors whose shape differs', misshapen),
        ('Model variables the checkpoint does not provide', missing)) if items]
    raise ConversionError(
        f'The state dict does not fit {what}.\n' + '\n'.join(parts) + '\nCheck that the '
        'checkpoint is the layout this model reads (rattn.convert.CHECKPOINT_LAYOUTS), and '
        'that num_classes and the model variant match the checkpoint.')
  return traverse_util.unflatten_dict(filled)


# timm's ResNet keeps every block attention under ``se`` (timm/models/resnet.py), whatever
# it is; what lies below tells them apart.
_TIMM_BLOCK_ATTENTION = re.compile(r'(layer\d+\.\d+)\.se\.(.+)')
_TIMM_KINDS = (('channel.', 'cbam'), ('conv.', 'eca'), ('fc1.', 'se'))
# The attention of each ResNet this module converts, and the model taking each timm kind.
_MODEL_ATTENTION = {'se_resnet50': 'se', 'cbam_resnet50': 'cbam', 'eca_resnet50': 'eca',
                    'eca_resnet50_official': 'eca', 'sge_resnet50': 'sge'}
_MODEL_FOR = {'se': 'se_resnet50', 'cbam': 'cbam_resnet50', 'eca': 'eca_resnet50'}


def timm_block_attention(state_dict: Mapping[str, Any]) -> Optional[str]:
  """'se', 'eca' or 'cbam' for a timm ResNet's block attention (its ``layerN.M.se.*``
  keys), None without such keys."""
  inner = [m.group(2) for k in state_dict if (m := _TIMM_BLOCK_ATTENTION.fullmatch(k))]
  for prefix, kind in _TIMM_KINDS:
    if any(i.startswith(prefix) for i in inner):
      return kind
  return None


def _from_timm(state_dict: Mapping[str, Any], kind: str) -> Dict[str, Any]:
  """timm's ``layerN.M.se.*`` keys as the authors' releases name them (ECANet's ``eca``,
  Jongchan/attention-module's ``cbam``). timm's CBAM MLP has no biases (zeros here, the
  same function) and its spatial gate pools [mean, max] where the release pools [max,
  mean] (the conv's two input channels swap)."""
  out: Dict[str, Any] = {}
  for key, value in state_dict.items():
    match = _TIMM_BLOCK_ATTENTION.fullmatch(key)
    if not match:
      out[key] = value
      continue
    block, inner = match.groups()
    if kind == 'eca':
      out[f'{block}.eca.{inner}'] = value
      continue
    fc = re.fullmatch(r'channel\.fc([12])\.(weight|bias)', inner)
    if fc:
      layer = f'{block}.cbam.ChannelGate.mlp.{1 if fc.group(1) == "1" else 3}'
      out[f'{layer}.{fc.group(2)}'] = value
      if fc.group(2) == 'weight' and f'{block}.se.channel.fc{fc.group(1)}.bias' not in state_dict:
        out[f'{layer}.bias'] = np.zeros(np.shape(value)[0], np.asarray(value).dtype)
    elif inner == 'spatial.conv.conv.weight':
      out[f'{block}.cbam.SpatialGate.spatial.conv.weight'] = np.asarray(value)[:, ::-1]
    elif inner.startswith('spatial.conv.bn.'):
      out[f'{block}.cbam.SpatialGate.spatial.bn.{inner[len("spatial.conv.bn."):]}'] = value
    else:
      out[key] = value  # reported as a tensor with no place in the model
  return out


def convert_state_dict(model_name: str, state_dict: Mapping[str, Any],
                       variables: Mapping[str, Any]) -> Dict[str, Any]:
  """A PyTorch ``state_dict`` for ``model_name`` as rattn variables shaped like ``variables``.

  ECA and CBAM ResNets also read timm's names (``timm_block_attention``); a timm
  checkpoint whose block attention is another model's is refused naming that model.
  """
  key = model_name.lower()
  if key not in CHECKPOINT_LAYOUTS:
    raise ConversionError(
        f'No PyTorch checkpoint layout is known for model {model_name!r}. Convertible models: '
        f'{", ".join(sorted(CHECKPOINT_LAYOUTS))}.')
  translate, layout = CHECKPOINT_LAYOUTS[key]
  timm = timm_block_attention(state_dict) if translate is _resnet_translate else None
  wanted = _MODEL_ATTENTION.get(key)
  if timm and timm != wanted:
    example = next(k for k in state_dict if _TIMM_BLOCK_ATTENTION.fullmatch(k))
    takes = f'{wanted.upper()} attention' if wanted else 'no block attention'
    raise ConversionError(
        f'The checkpoint is a timm ResNet with {timm.upper()} block attention (keys such as '
        f"{example!r}: timm keeps every block attention under 'se'), but {key} has {takes}. "
        f'Convert it with --model {_MODEL_FOR[timm]}.')
  if timm in ('eca', 'cbam'):
    state_dict = _from_timm(state_dict, timm)
    layout = f'timm ResNet-50 with {timm} block attention'
  return convert_with(translate, state_dict, variables, what=f'{key} (reads {layout})')


def convert_attention_state_dict(attention: str, state_dict: Mapping[str, Any],
                                 variables: Mapping[str, Any]) -> Dict[str, Any]:
  """The authors' attention module on its own (e.g. a ``CBAM`` or ``CoordAtt`` state dict)."""
  if attention not in _ATTENTION_KEYS:
    raise ConversionError(f'No PyTorch layout is known for attention {attention!r}; known: '
                          f'{", ".join(sorted(_ATTENTION_KEYS))}.')
  return convert_with(_attention_translator(attention), state_dict, variables,
                      what=f'attention {attention!r}')
