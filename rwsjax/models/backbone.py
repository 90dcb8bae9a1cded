"""The backbone contract: what every backbone returns and the hooks RWS needs (docs/design.md).

A backbone is a flax module with a `dtype` attribute (its computation dtype, which the heads
and ISIM's classifier follow) called as

  features = backbone(images, *, train=False, layer_hook=None)

  images: (N, H, W, 3) normalised images.
  features: a dict with
    'layer1'..'layer4' (`LAYER_NAMES`): the four layer outputs (N, H/s_i, W/s_i, C_i), RWS's
      F_1..F_4; s_i are the strides that the backbone's registration reports for the config
      (`rwsjax.models.register_backbone`). Every head reads 'layer4', DeepLabv3+ 'layer1',
      ISIM's AffinityNet 'layer2'..'layer4' (all at stride 8).
    'stem': the stride-2 features the UNet head takes as its last skip.

  Every stage output goes through `layer_output` before the next stage reads it: RWS stage 3
  fuses local features there (`layer_hook`), Seg-Grad-CAM takes dS/dF_i as the gradient with
  respect to the zero 'perturbations' it adds, and 'intermediates' records it. These use the
  layer names, so no submodule of the backbone may be named 'layer1'..'layer4'.

A backbone is registered under its config.model.backbone name with `register_backbone(name,
build, strides)`; `rwsjax.models.resnet` registers resnet18..resnet152 this way. Pretrained
weights (config.model.pretrained) are read by parameter name in torchvision's layout
(`rwsjax.models.pretrained`); a backbone with other names trains from random weights.
"""
LAYER_NAMES = ('layer1', 'layer2', 'layer3', 'layer4')


def layer_output(module, name, x, layer_hook=None):
  """Stage `name`'s output `x` as the rest of the network sees it: `layer_hook(name, x)` when
  a hook is given (RWS eq. 7, the fused map feeds the next layer), then `module.perturb(name,
  x)` (collection 'perturbations': the gradient with respect to it is dS/dF_i, Seg-Grad-CAM
  eq. 1; `apply` without that collection makes it the identity) and `module.sow(
  'intermediates', name, x)`. Call it inside the backbone's compact `__call__`."""
  x = layer_hook(name, x) if layer_hook is not None else x
  x = module.perturb(name, x)
  module.sow('intermediates', name, x)
  return x
