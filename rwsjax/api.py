"""A finished run from Python, for notebooks: load it from its workdir and segment images.

  from rwsjax import api
  run = api.load_run('runs/shapes_rws')   # the config its run record holds: no flags
  mask = run.predict('photo.jpg')         # (H, W) class indices at the image's size
  masks = run.predict([image_a, image_b])  # uint8 arrays (H, W, 3) work too

A run is what `launch.py --mode=predict` would use with the run's own config: the pipeline's
final product (`trained_predictor`: the supervised model, the RWS network, ISIM's final model)
and config.eval's settings (test-time augmentation, max_side, pad_multiple; pass `eval` to
`load_run` to change them). It is checked as that mode checks: the workdir's stages must have
been made with the recorded settings. For an RWS run, `rwsjax.rws.look` shows one image's
Seg-Grad-CAM maps and weak windows.
"""
import importlib
import os

from rwsjax import inference
from rwsjax import pipelines
from rwsjax import preflight
from rwsjax import record
from rwsjax import train


class FinishedRun:
  """A finished run, ready to segment images (`load_run`).

  Attributes:
    workdir: the run's directory.
    config: the config the run recorded.
    pipeline: the method's pipeline (`rwsjax.pipelines`).
    predictor: its `stages.Predictor` (model, variables, the function giving logits).
  """

  def __init__(self, workdir, config, pipeline, predictor):
    self.workdir, self.config, self.pipeline, self.predictor = (workdir, config, pipeline,
                                                                predictor)
    self._segment = inference.image_segmenter(predictor, config.eval)

  def predict(self, images):
    """The mask of an image, or a list of masks for a list: an image is a path (JPEG, PNG,
    turned upright by its EXIF orientation) or a uint8 array (H, W, 3), (H, W) or (H, W, 4);
    a mask is (H, W) int32 class indices at the image's size (`config.dataset` names them)."""
    if isinstance(images, (list, tuple)):
      return [self.predict(image) for image in images]
    return self._segment(read(images))

  def __repr__(self):
    return (f'FinishedRun({self.workdir!r}, method={self.config.method!r}, '
            f'network={self.predictor.title!r})')


def read(image):
  """uint8 (H, W, 3) of a path or an image array (`inference.as_rgb`)."""
  if isinstance(image, (str, os.PathLike)):
    path = os.fspath(image)
    if not os.path.isfile(path):
      raise ValueError(f'{path} is not a file; expected a JPEG or PNG image.')
    array = inference.read_image(path)
    if array is None:
      raise ValueError(f'{path} is not a JPEG or PNG image that can be read.')
    return array
  return inference.as_rgb(image)


def load_run(workdir, *, imports=(), eval=None):  # pylint: disable=redefined-builtin
  """The finished run in `workdir` (`FinishedRun`), with the config its summary.json records.

  Args:
    workdir: a directory where `launch.py --mode=train` finished a run.
    imports: modules to import first, those the run was trained with `--imports` (a
      backbone, dataset or method of your own registers itself on import).
    eval: optional {field: value} replacing config.eval fields (tta, scales, flip, max_side,
      pad_multiple), which no stage reads.

  Raises:
    preflight.UserInputError: no finished run there, or its stages were made with other
      settings than its record says, or the method makes no predictor.
  """
  for name in imports:
    importlib.import_module(name)
  workdir = os.path.abspath(workdir)
  config = preflight.user_input(record.recorded_config, workdir)
  for field, value in (eval or {}).items():
    config.eval[field] = tuple(value) if isinstance(value, list) else value
  pipeline = preflight.user_input(pipelines.get_pipeline, config.method)
  pipelines.check_predictor(pipeline, config, 'api.load_run')
  preflight.for_trained_run(config, workdir, pipeline.check_config,
                            inference.stage_plan(pipeline, config))
  predictor = preflight.user_input(pipeline.trained_predictor, config, workdir,
                                   train.make_mesh(1))
  return FinishedRun(workdir, config, pipeline, predictor)
