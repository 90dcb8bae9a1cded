"""rwsjax.pipelines: the registry launch.py dispatches through, and the contract it checks."""
import types

import pytest

from rwsjax import pipelines


def _pipeline(**parts):
  base = dict(run=lambda config, workdir, recompute_from=(): {}, stage_table=lambda c: {},
              check_config=lambda c: None, NO_PREDICTOR='it makes no model')
  return types.SimpleNamespace(**{**base, **parts})


@pytest.fixture(autouse=True)
def _restore_registry(monkeypatch):
  monkeypatch.setattr(pipelines, '_PIPELINES', dict(pipelines._PIPELINES))  # pylint: disable=protected-access


def test_registered_objects_and_import_paths():
  toy = _pipeline()
  pipelines.register_pipeline('toy', toy)
  pipelines.register_pipeline('lazy', 'rwsjax.supervised')
  assert pipelines.get_pipeline('toy') is toy
  assert pipelines.get_pipeline('lazy').__name__ == 'rwsjax.supervised'
  assert {'toy', 'lazy'} <= set(pipelines.names())
  replacement = _pipeline()
  pipelines.register_pipeline('toy', replacement)
  assert pipelines.get_pipeline('toy') is replacement


def test_an_unknown_method_names_the_registered_ones():
  pipelines.register_pipeline('toy', _pipeline())
  with pytest.raises(ValueError, match=r"config.method='nope'; expected one of \[.*'toy'"):
    pipelines.get_pipeline('nope')


def test_the_contract_is_checked_when_registered_or_first_used():
  with pytest.raises(TypeError, match='has no run, check_config'):
    pipelines.register_pipeline('bad', _pipeline(run=None, check_config='not callable'))
  with pytest.raises(TypeError, match='neither trained_predictor nor a NO_PREDICTOR'):
    pipelines.register_pipeline('bad', _pipeline(NO_PREDICTOR=None))
  pipelines.register_pipeline('good', _pipeline(NO_PREDICTOR=None, trained_predictor=print))
  pipelines.register_pipeline('module', 'rwsjax.losses')  # imported, and checked, on use
  with pytest.raises(TypeError, match="registered as 'module' has no run, stage_table"):
    pipelines.get_pipeline('module')
