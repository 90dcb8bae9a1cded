"""The RWS pipeline: round stop rule, config checks, the stage-3 fused loss, and a smoke run of
all stages with kill-and-resume."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_util import load_config
from rwsjax import losses
from rwsjax import models
from rwsjax import rws
from rwsjax import train


def test_should_stop():
  assert rws.should_stop([0], 20)
  assert not rws.should_stop([100], 20)
  assert rws.should_stop([100, 85], 20)
  assert not rws.should_stop([100, 79], 20)
  assert not rws.should_stop([100, 121], 20)
  assert rws.should_stop([100, 50, 0], 20)


def test_config_errors():
  config = load_config("shapes_rws", "smoke")
  rws.check_config(config)
  config.rws.slice_size = 48
  with pytest.raises(ValueError, match="config.rws.slice_size = 48 is larger than the crop"):
    rws.check_config(config)
  config = load_config("shapes_rws", "smoke")
  config.rws.slices = "random"
  with pytest.raises(ValueError, match=r"config.rws.slices='random'; expected one of"):
    rws.check_config(config)
  config = load_config("shapes_rws", "smoke")
  config.rws.fuse_layers = (0, 4)
  with pytest.raises(ValueError, match="config.rws.fuse_layers"):
    rws.check_config(config)
  config = load_config("shapes_rws", "smoke")
  config.rws.slice_stride = 4
  with pytest.raises(ValueError, match="multiples of the layer2 feature stride 8"):
    rws.check_config(config)


@pytest.fixture(scope="module")
def tiny():
  config = load_config("shapes_rws", "smoke")
  model = models.build_model(config.model, config.dataset.num_classes)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  labels = np.zeros((2, 32, 32), np.int32)
  labels[:, 8:24, 4:20] = 3
  labels[1, 20:, 20:] = 5
  labels[0, :2] = 255
  batch = {"image": images, "label": jnp.asarray(labels)}
  glob = train.init_variables(model, (1, 32, 32, 3), jax.random.key(1))
  local = train.init_variables(model, (1, 32, 32, 3), jax.random.key(2))
  return config, model, batch, glob, local


def plain_loss(model, params, batch_stats, batch, rng):
  logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                       train=True, mutable=["batch_stats"], rngs={"dropout": rng})[0]
  return losses.cross_entropy(logits, batch["label"])


def test_fused_loss_is_the_plain_loss_without_weak_slices(tiny):
  config, model, batch, glob, local = tiny
  loss_fn = rws.fusion_loss(model, config)
  rng = jax.random.key(3)
  _, drop_rng = jax.random.split(rng)
  extra = {"global": glob, "local": local, "threshold": jnp.float32(0.0)}
  loss, (_, stats) = loss_fn(glob["params"], glob["batch_stats"], batch, rng, extra)
  assert float(stats["weak_slices"]) == 0.0 and float(stats["selected"]) == 0.0
  expected = plain_loss(model, glob["params"], glob["batch_stats"], batch, drop_rng)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_fused_loss_mixes_local_features_into_weak_slices(tiny):
  config, model, batch, glob, local = tiny
  config = config.copy_and_resolve_references()
  config.rws.select_omega = False  # every pixel of a weak slice is integrated with n = 0.5
  config.rws.weighted_lambda = False
  config.rws.fuse_layers = (4,)
  rng = jax.random.key(3)
  extra = {"global": glob, "local": local, "threshold": jnp.float32(1.01)}
  loss, (_, stats) = rws.fusion_loss(model, config)(glob["params"], glob["batch_stats"], batch,
                                                   rng, extra)
  assert float(stats["weak_slices"]) == config.rws.max_slices  # every window is weak
  assert 0 < float(stats["selected"]) <= 1
  _, drop_rng = jax.random.split(rng)
  assert not np.isclose(loss, plain_loss(model, glob["params"], glob["batch_stats"], batch,
                                         drop_rng))
  with_same_local = {"global": glob, "local": glob, "threshold": jnp.float32(1.01)}
  same, _ = rws.fusion_loss(model, config)(glob["params"], glob["batch_stats"], batch, rng,
                                            with_same_local)
  assert np.isfinite(same)


def run_smoke(workdir, data_dir, monkeypatch=None, fail_stage=None):
  config = load_config("shapes_rws", "smoke")
  config.dataset.data_dir = str(data_dir)
  config.train.checkpoint_every = 1
  if fail_stage is not None:
    original = train.Checkpointer.save

    def save_then_fail(self, step, state):
      original(self, step, state)
      if fail_stage in str(self.manager.directory) and step == 1:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train.Checkpointer, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
      rws.run(config, str(workdir))
    monkeypatch.undo()
    return None
  return rws.run(config, str(workdir))


def metric_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_smoke_run_resumes_after_a_kill(tmp_path, monkeypatch):
  data_dir = tmp_path / "tfds"
  full = run_smoke(tmp_path / "full", data_dir)
  run_smoke(tmp_path / "killed", data_dir, monkeypatch, fail_stage="round_1/stage3")
  rows = metric_rows(tmp_path / "killed")
  assert [r["step"] for r in rows if r["stage"] == "round_1/stage3"] == [1]
  resumed = run_smoke(tmp_path / "killed", data_dir)
  rows = metric_rows(tmp_path / "killed")
  for stage, steps in (("stage1", 2), ("round_1/stage2", 2), ("round_1/stage3", 2),
                       ("baseline", 6)):
    assert [r["step"] for r in rows if r["stage"] == stage] == list(range(1, steps + 1)), stage
  for key in ("rws", "baseline", "stage1"):
    assert resumed[key]["miou"] == pytest.approx(full[key]["miou"], abs=1e-6), key
  assert resumed["rounds"] == full["rounds"]
  assert full["total_steps"] == 6 and full["rounds"][0]["trained"]
  for name in ("summary.json", "results.md", "per_class_iou.png", "predictions.png",
               "round_1/heatmaps.png", "round_1/weak_slices.png", "round_1/threshold_curve.png"):
    assert os.path.exists(tmp_path / "full" / name), name
  assert json.load(open(tmp_path / "full" / "summary.json"))["config"]["slices"] == "weak"


def test_classes_without_a_segcam_slot_are_not_present():
  from rwsjax import segcam, slices
  present = jnp.ones((2, 3, 4), bool)  # (N, windows, K)
  scores = slices.WindowScores(jnp.zeros((2, 3, 4)), present, jnp.ones((2, 3, 4), jnp.int32),
                               None)
  result = segcam.SegCamResult({}, jnp.array([[0, 2], [3, -1]]), jnp.array([[True, True],
                                                                            [True, False]]),
                               None, {})
  out = rws.scored_classes(scores, result, 4)
  expected = np.zeros((2, 3, 4), bool)
  expected[0, :, [0, 2]] = True
  expected[1, :, 3] = True
  np.testing.assert_array_equal(out.present, expected)
  expected[:, :, 0] = False
  np.testing.assert_array_equal(rws.scored_classes(scores, result, 4, "foreground").present,
                                expected)


def test_no_fused_layers_is_plain_fine_tuning(tiny):
  config, model, batch, glob, local = tiny
  config = config.copy_and_resolve_references()
  config.rws.fuse_layers = ()
  rws.check_config(config)
  rng = jax.random.key(3)
  extra = {"global": glob, "local": local, "threshold": jnp.float32(1.01)}
  loss, _ = rws.fusion_loss(model, config)(glob["params"], glob["batch_stats"], batch, rng, extra)
  _, drop_rng = jax.random.split(rng)
  np.testing.assert_allclose(loss, plain_loss(model, glob["params"], glob["batch_stats"], batch,
                                              drop_rng), rtol=1e-6)
