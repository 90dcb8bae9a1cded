"""ImageNet weights from a local torchvision ResNet state dict (docs/methods.md, shared
building blocks: pretrained weights).

Nothing is downloaded: the user passes a file holding a torchvision `resnet*` state dict,
either as `.npz` (keys exactly the state-dict keys, e.g. `layer1.0.downsample.0.weight`) or
as `.pth`/`.pt` (needs PyTorch). Convolution kernels go from OIHW to HWIO; BatchNorm
weight/bias/running_mean/running_var become scale/bias (params) and mean/var (batch_stats).
`fc.*` and `num_batches_tracked` are ignored; any other difference is an error.

`backbone_state_dict` is the inverse, which the pretraining pipeline (`rwsjax.pretrain`)
exports its backbone with, as `config_lib.EXPORT_NAME` in its workdir.
"""
import os
import pickle
import re
import zipfile

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rwsjax import config as config_lib
from rwsjax.models.registry import BACKBONES

# The command that writes config_lib.EXPORT_NAME (README, pretrained weights for the synthetic
# data).
EXPORT_COMMAND = 'python launch.py --config=configs/shapes_pretrain.py --workdir={workdir}'
_IGNORED = re.compile(r'(^fc\.)|(num_batches_tracked$)')
_BLOCK = re.compile(r'(layer\d)_(\d+)')
_MODULES = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
_LEAVES = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def torch_key(collection, path):
  """torchvision state-dict key of the backbone variable `collection`/`path`, e.g.
  ('params', ('layer1_0', 'downsample_conv', 'kernel')) -> 'layer1.0.downsample.0.weight'."""
  modules = [_MODULES.get(m, _BLOCK.sub(r'\1.\2', m)) for m in path[:-1]]
  return '.'.join(modules + [_LEAVES[(collection, path[-1])]])


def _torch_shape(shape):
  """torchvision layout of a flax shape (HWIO kernels are OIHW there)."""
  return tuple(shape[i] for i in (3, 2, 0, 1)) if len(shape) == 4 else tuple(shape)


def missing_file_advice(path):
  """What to do about a missing weights file: run the pretraining command into its directory
  when it is named as the pretraining export, else pass a state dict or pretrain one."""
  if os.path.basename(path) == config_lib.EXPORT_NAME:
    command = EXPORT_COMMAND.format(workdir=os.path.dirname(path) or '.')
    return f'run the pretraining command that writes it first, `{command}`'
  command = EXPORT_COMMAND.format(workdir='DIR')
  return (f'pass a torchvision ResNet state dict, or pretrain one first with `{command}`, '
          f'which writes DIR/{config_lib.EXPORT_NAME}')


def read_state_dict(path):
  """{key: float32 numpy array} of the torchvision state dict in `path` (.npz, .pth, .pt),
  without the ignored keys."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Pretrained weights file {path} (config.model.pretrained) does '
                            f'not exist: {missing_file_advice(path)}.')
  if path.endswith('.npz'):
    try:
      with np.load(path) as data:
        return {k: np.asarray(data[k], np.float32) for k in data.files
                if not _IGNORED.search(k)}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f'Pretrained weights file {path} (config.model.pretrained) is not a '
                       f'readable .npz archive of arrays ({e}).') from None
  if not path.endswith(('.pth', '.pt')):
    raise ValueError(f'Pretrained weights file {path} (config.model.pretrained) must end in '
                     '.npz, .pth or .pt.')
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f'Reading {path} needs PyTorch, which is not installed: install torch, '
                      'or convert the state dict to .npz with numpy.savez where torch is.') from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
    raise ValueError(f'Pretrained weights file {path} (config.model.pretrained) cannot be read '
                     f'by torch.load ({e}).') from None
  if not isinstance(state, dict) or not all(hasattr(v, 'numpy') for v in state.values()):
    raise ValueError(f'Pretrained weights file {path} does not hold a state dict of tensors.')
  return {k: v.detach().cpu().float().numpy() for k, v in state.items()
          if not _IGNORED.search(k)}


def load_pretrained_backbone(variables, path, model_cfg, *, scope=('backbone',)):
  """`variables` with the backbone's params and batch_stats replaced by the file's weights.

  Args:
    variables: model variables ({'params': ..., 'batch_stats': ...}, other collections are
      passed through).
    path: .npz or .pth file of a torchvision ResNet state dict (config.model.pretrained).
    model_cfg: config.model; its `backbone` and `width` name the expected architecture in
      error messages.
    scope: module path of the ResNet inside the variables: ('backbone',) for
      `SegmentationModel`, () for a bare `ResNet`.

  Returns:
    A new (unfrozen) variables dict; the head is untouched.
  """
  backbone, width = (config_lib.field(model_cfg, 'model', key) for key in ('backbone', 'width'))
  if backbone not in BACKBONES:
    raise ValueError(f'config.model.backbone={backbone!r} is not one of {list(BACKBONES)}.')
  arch = f'config.model.backbone={backbone!r}, width={width}'
  flat = traverse_util.flatten_dict(flax.core.unfreeze(variables))
  scope = tuple(scope)
  targets = {torch_key(key[0], key[1 + len(scope):]): key for key in flat
             if key[0] in ('params', 'batch_stats') and key[1:1 + len(scope)] == scope}
  if not targets:
    raise ValueError(f'The model variables hold no backbone under {"/".join(scope)!r}.')
  state = read_state_dict(path)
  missing = sorted(set(targets) - set(state))
  if missing:
    raise ValueError(f'{path} lacks key {missing[0]!r} ({len(missing)} missing in all) '
                     f'needed by {arch}.')
  unexpected = sorted(set(state) - set(targets))
  if unexpected:
    raise ValueError(f'{path} has key {unexpected[0]!r} ({len(unexpected)} unexpected in '
                     f'all) that {arch} does not have.')
  for name, key in targets.items():
    value, target = state[name], flat[key]
    if value.shape != _torch_shape(target.shape):
      raise ValueError(f'{path}: key {name!r} has shape {value.shape}, expected '
                       f'{_torch_shape(target.shape)} for {arch}.')
    value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    flat[key] = jnp.asarray(value, target.dtype)
  return traverse_util.unflatten_dict(flat)


def host_array(value):
  """A float32 numpy copy of a (possibly replicated, multi-host) array as this process holds
  it."""
  return np.asarray(value.addressable_data(0) if isinstance(value, jax.Array) else value,
                    np.float32)


def backbone_state_dict(variables, *, scope=('backbone',), num_batches_tracked=None):
  """The torchvision state dict of the backbone in `variables`, the inverse of
  `load_pretrained_backbone`: {key: float32 numpy array}, kernels HWIO -> OIHW, BatchNorm
  scale/bias/mean/var as weight/bias/running_mean/running_var.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of a model holding the backbone.
    scope: module path of the ResNet inside the variables, as in `load_pretrained_backbone`.
    num_batches_tracked: an int: also each BatchNorm's `num_batches_tracked` (int64), which a
      torchvision module holds (and `read_state_dict` ignores); None: without them.
  """
  flat = traverse_util.flatten_dict(flax.core.unfreeze(variables))
  scope = tuple(scope)
  state = {}
  for key, value in flat.items():
    if key[0] in ('params', 'batch_stats') and key[1:1 + len(scope)] == scope:
      value = host_array(value)
      state[torch_key(key[0], key[1 + len(scope):])] = (
          value.transpose(3, 2, 0, 1) if value.ndim == 4 else value)
  if not state:
    raise ValueError(f'The model variables hold no backbone under {"/".join(scope)!r}.')
  if num_batches_tracked is not None:
    for name in [k for k in state if k.endswith('.running_mean')]:
      state[name.removesuffix('running_mean') + 'num_batches_tracked'] = np.array(
          num_batches_tracked, np.int64)
  return state


def save_state_dict(path, state):
  """Writes the state dict `state` to `path` (.npz, its keys as the archive's names) through a
  temporary file renamed into place, so that a kill never leaves half a file."""
  temporary = f'{path}.tmp.npz'
  np.savez(temporary, **state)
  os.replace(temporary, path)
