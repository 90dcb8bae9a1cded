"""Using a finished run: evaluate it again, or segment a folder of images
(`launch.py --mode=evaluate | predict`), for every pipeline.

A pipeline module gives its final product as a `stages.Predictor` (`trained_predictor`):
the supervised model, the RWS network (or the refined network alone, config.rws.inference),
ISIM's final segmentation model. This module evaluates and applies it; nothing here depends on
the pipeline. Both refuse, in one sentence, a workdir whose stages were made with other
settings than the given config (`rwsjax.provenance.check`); fields no stage reads, such as
config.eval, may differ.

Test-time augmentation (config.eval.tta; docs/methods.md, shared building blocks): the image
is resized bilinearly by each of config.eval.scales, and also flipped horizontally with
config.eval.flip; each prediction's logits are resized back to the image size and turned into
probabilities; the probabilities are averaged, and their log is returned as the logits.

Predicting on images of any size: an image whose long side exceeds config.eval.max_side
first shrinks to that long side (bilinear, aspect kept), so memory is bounded by max_side
whatever the input; it is padded at the bottom and right to multiples of
config.eval.pad_multiple (padding is marked invalid and cropped off), predicted, and its
logits are upsampled bilinearly to the original size in strips of rows, so the full-size
logits are never held at once. The mask has the original image's size.
"""
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import PIL.ImageOps

from rwsjax import data
from rwsjax import evaluate as evaluate_lib
from rwsjax import figures
from rwsjax import models
from rwsjax import preflight
from rwsjax import provenance
from rwsjax import record
from rwsjax import stages
from rwsjax import train
from rwsjax.data import pipeline
from rwsjax.progress import Progress

OVERLAY_DIR = 'overlay'
OVERLAY_ALPHA = 0.5  # weight of the class colour in the overlay
UPSAMPLE_ROWS = 256  # output rows per strip of the final upsampling


def tta_logits(predict_fn, variables, batch, scales, flip):
  """Test-time augmentation of `predict_fn` (module docstring): the log of the softmax
  averaged over `scales` x (image, flipped image if `flip`), at the batch's image size.
  'valid' (False on padding), when the batch has it, is resized and flipped with the image."""
  images = batch['image']
  n, height, width = images.shape[:3]
  total, count = 0.0, 0
  for scale in scales:
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    scaled = dict(batch, image=models.resize_bilinear(images, size))
    if 'valid' in batch:
      scaled['valid'] = jax.image.resize(batch['valid'], (n, *size), 'nearest')
    for flipped in ((False, True) if flip else (False,)):
      view = {k: scaled[k][:, :, ::-1] if flipped else scaled[k] for k in ('image', 'valid')
              if k in scaled}
      logits = predict_fn(variables, dict(scaled, **view))
      if flipped:
        logits = logits[:, :, ::-1]
      total += jax.nn.softmax(models.resize_bilinear(logits, (height, width)), axis=-1)
      count += 1
  return jnp.log(total / count)


def with_tta(predict_fn, eval_cfg):
  """`predict_fn` with config.eval's test-time augmentation when config.eval.tta is on."""
  if not eval_cfg.tta:
    return predict_fn
  scales, flip = tuple(eval_cfg.scales), bool(eval_cfg.flip)
  return lambda variables, batch: tta_logits(predict_fn, variables, batch, scales, flip)


def tta_title(eval_cfg):
  """'' or ' + TTA (scales 0.5-1.75, flip)' for table rows."""
  if not eval_cfg.tta:
    return ''
  scales = tuple(eval_cfg.scales)
  span = f'{min(scales):g}-{max(scales):g}' if len(scales) > 1 else f'{scales[0]:g}'
  return f" + TTA (scales {span}{', flip' if eval_cfg.flip else ''})"


def stage_plan(pipeline_module, config):
  """The `provenance.Plan` of `config`'s stages: evaluate and predict refuse a run whose
  stages were made with other settings."""
  return provenance.Plan(pipeline_module.stage_table(config), config)


def evaluate_run(config, workdir, pipeline_module, split=None):
  """Evaluates the finished run in `workdir` on `split` (default config.dataset.eval_split),
  with config.eval's test-time augmentation when it is on. Writes eval_<split>.json (the
  result, the settings and the run record) and the table to eval_<split>.md (eval_<split>_tta
  with TTA) in `workdir`, prints the table and returns the summary."""
  split = split or config.dataset.eval_split
  preflight.for_evaluation(config, workdir, pipeline_module.check_config, split,
                           stage_plan(pipeline_module, config))
  mesh = train.make_mesh(config.num_devices)
  predictor = preflight.user_input(pipeline_module.trained_predictor, config, workdir, mesh)
  source = data.load_source(config.dataset, split)
  confusion = stages.evaluate_model(None, predictor.variables, source, predictor.config,
                                    mesh, with_tta(predictor.predict_fn, config.eval))
  names = data.class_names(config.dataset)
  result = evaluate_lib.summarize(confusion, names)
  name = record.EVAL_NAME.format(split=split, tta='_tta' if config.eval.tta else '')
  table = evaluate_lib.miou_table(split, [(predictor.title + tta_title(config.eval), result)],
                                  names)
  tta = ({'scales': list(config.eval.scales), 'flip': bool(config.eval.flip)}
         if config.eval.tta else None)
  summary = record.write_results(
      workdir, config, {'method': config.method, 'network': predictor.title, 'split': split,
                        'tta': tta, name: result},
      table, name=f'{name}.json', table_name=f'{name}.md', figures=False)
  print(table)
  return summary


def upsample_argmax(logits, size, rows=UPSAMPLE_ROWS):
  """argmax over classes of `logits` (h, w, K) resized bilinearly (half-pixel centres, as
  `jax.image.resize`) to `size` = (H, W) >= (h, w), computed `rows` output rows at a time:
  (H, W) int32, without holding (H, W, K)."""
  logits = np.asarray(logits, np.float32)

  def taps(n_out, n_in):
    """Source indices and weights of linear interpolation with half-pixel centres."""
    position = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(position).astype(np.int64)
    return low, np.minimum(low + 1, n_in - 1), (position - low).astype(np.float32)

  (y0, y1, wy), (x0, x1, wx) = taps(size[0], logits.shape[0]), taps(size[1], logits.shape[1])
  out = np.empty(size, np.int32)
  for start in range(0, size[0], rows):
    part = slice(start, start + rows)
    strip = (logits[y0[part]] * (1 - wy[part, None, None])
             + logits[y1[part]] * wy[part, None, None])
    strip = strip[:, x0] * (1 - wx[None, :, None]) + strip[:, x1] * wx[None, :, None]
    out[part] = np.argmax(strip, axis=-1)
  return out


def read_image(path):
  """RGB uint8 (H, W, 3) of an image file, turned upright by its EXIF orientation; None
  (with a one-line warning) for a file that is not an image PIL can read."""
  try:
    with PIL.Image.open(path) as image:
      return np.asarray(PIL.ImageOps.exif_transpose(image).convert('RGB'))
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
    logging.warning('predict: skipping %s: not a JPEG or PNG image that can be read (%s).',
                    os.path.basename(path), ' '.join(str(error).split()))
    return None


def working_image(image, eval_cfg, input_cfg):
  """(normalised image (1, h', w', 3) padded to multiples of pad_multiple, valid (1, h', w'),
  (h, w) of the image inside) after shrinking the long side to at most max_side."""
  shape = image.shape[:2]
  size = pipeline.long_side_size(shape, eval_cfg.max_side)
  image = pipeline.resize(image, size, PIL.Image.BILINEAR)
  multiple = max(1, eval_cfg.pad_multiple)
  padded = tuple(-(-n // multiple) * multiple for n in size)
  canvas = np.zeros((1, *padded, 3), np.float32)
  canvas[0, :size[0], :size[1]] = pipeline.normalize(image, input_cfg)
  valid = np.zeros((1, *padded), bool)
  valid[0, :size[0], :size[1]] = True
  return canvas, valid, size


def as_rgb(image):
  """uint8 (H, W, 3) of an RGB, RGBA or grey (H, W) image array."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f'An image has shape {image.shape}; expected (H, W), (H, W, 3) or '
                     '(H, W, 4).')
  return image[..., :3].astype(np.uint8)


def image_segmenter(predictor, eval_cfg):
  """image -> mask with `predictor` (a `stages.Predictor`) and config.eval (module docstring:
  test-time augmentation, max_side, pad_multiple): the mask is (H, W) int32 class indices at
  the image's size, for a uint8 image (H, W, 3) (grey and RGBA arrays too, `as_rgb`). One
  jitted function per working size."""
  predict_fn = with_tta(predictor.predict_fn, eval_cfg)
  apply = jax.jit(lambda variables, image, valid: predict_fn(
      variables, {'image': image, 'valid': valid})[0])

  def segment(image):
    image = as_rgb(image)
    canvas, valid, (h, w) = working_image(image, eval_cfg, predictor.config.input)
    logits = np.asarray(apply(predictor.variables, canvas, valid))[:h, :w]
    return upsample_argmax(logits, image.shape[:2])

  return segment


def overlay(image, mask, background_class):
  """The image blended with the class colours of `mask` (OVERLAY_ALPHA); pixels of the
  background class keep the image."""
  colour = figures.colorize(mask).astype(np.float32)
  blended = (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colour
  if background_class is not None:
    blended = np.where((mask == background_class)[..., None], image, blended)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_mask(path, mask):
  """`mask` (H, W) class indices as a palette PNG in the VOC colours (`figures.label_palette`)."""
  image = PIL.Image.fromarray(mask.astype(np.uint8))
  image.putpalette(figures.label_palette().ravel().tolist())
  image.save(path)


def predict_folder(config, workdir, pipeline_module, images, out):
  """Segments every image file in the folder `images` with the finished run in `workdir`
  (module docstring), with config.eval's test-time augmentation when it is on. Writes
  `out/<stem>.png` (palette mask, the image's size) and `out/overlay/<stem>.jpg`; a file that
  is not an image, or whose stem an earlier file took, is skipped with a one-line warning.
  Runs in this process on one device. Returns the paths of the masks written."""
  preflight.for_prediction(config, workdir, pipeline_module.check_config, images, out,
                           stage_plan(pipeline_module, config))
  mesh = train.make_mesh(1)
  predictor = preflight.user_input(pipeline_module.trained_predictor, config, workdir, mesh)
  segment = image_segmenter(predictor, config.eval)
  background = config.dataset.background_class
  files = sorted(f for f in os.listdir(images) if os.path.isfile(os.path.join(images, f)))
  os.makedirs(os.path.join(out, OVERLAY_DIR), exist_ok=True)
  progress, written = Progress('predict', len(files)), {}
  start = time.perf_counter()
  for done, name in enumerate(files, 1):
    stem = os.path.splitext(name)[0]
    image = read_image(os.path.join(images, name))
    if image is not None and stem in written:
      logging.warning('predict: skipping %s: %s already gave the mask %s.png.', name,
                      written[stem], stem)
    elif image is not None:
      mask = segment(image)
      save_mask(os.path.join(out, f'{stem}.png'), mask)
      PIL.Image.fromarray(overlay(image, mask, background)).save(
          os.path.join(out, OVERLAY_DIR, f'{stem}.jpg'), quality=90)
      written[stem] = name
    progress.tick(done)
  logging.info('predict: %d masks in %s (%.1f s), overlays in %s.', len(written), out,
               time.perf_counter() - start, os.path.join(out, OVERLAY_DIR))
  return [os.path.join(out, f'{stem}.png') for stem in written]
