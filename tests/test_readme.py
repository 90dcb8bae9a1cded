"""README claims that the code decides: each row of the "Real datasets" table describes a
directory that the dataset's own layout check accepts, with the dataset's class count."""
import os
import re

import pytest

from configs_util import ROOT
from rwsjax import data

TABLE_HEADER = '| `config.dataset.name` | `manual_dir` holds | classes |'


def dataset_rows(readme_text):
  """{dataset name: (paths the row names, class count)} of the README's dataset table."""
  lines = readme_text.splitlines()
  start = lines.index(TABLE_HEADER) + 2
  rows = {}
  for line in lines[start:]:
    if not line.startswith('|'):
      break
    name, holds, classes = (cell.strip() for cell in line.strip('|').split('|'))
    paths = [p for p in re.findall(r'`([^`]+)`', holds) if '/' in p]
    rows[name.strip('`')] = (paths, int(classes))
  return rows


def expand(pattern):
  """Shell-style brace expansion ('a/{b,c}' -> ['a/b', 'a/c']); '<city>'-style placeholders
  become a sample folder name."""
  pattern = re.sub(r'<\w+>', 'sample', pattern)
  group = re.search(r'\{([^{}]*)\}', pattern)
  if group is None:
    return [pattern]
  return [path for option in group.group(1).split(',')
          for path in expand(pattern[:group.start()] + option + pattern[group.end():])]


def build_tree(root, paths):
  """Creates each path under `root`: a file where the name has a suffix, else a folder."""
  for path in paths:
    full = os.path.join(root, *path.split('/'))
    if re.search(r'\.\w+$', path):
      os.makedirs(os.path.dirname(full), exist_ok=True)
      open(full, 'w').close()
    else:
      os.makedirs(full, exist_ok=True)


def related(path, layout_paths):
  """Whether `path` is a layout path, lies inside one, or holds one."""
  return any(path == v or path.startswith(v + '/') or v.startswith(path + '/')
             for v in layout_paths)


def readme_rows():
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    return dataset_rows(f.read())


def test_the_table_lists_every_dataset_read_from_manual_dir():
  assert sorted(readme_rows()) == sorted(data.manual_datasets())


@pytest.mark.parametrize('name', sorted(data.manual_datasets()))
def test_a_tree_built_from_the_readme_row_passes_the_layout_check(name, tmp_path):
  paths, classes = readme_rows()[name]
  declared = data.manual_datasets()[name]
  expanded = [p for pattern in paths for p in expand(pattern)]
  layout = [v.replace(os.sep, '/') for v in declared.layout.values()]
  assert [p for p in expanded if not related(p, layout)] == []
  build_tree(tmp_path, expanded)
  declared.check_layout(str(tmp_path))
  assert classes == declared.num_classes


def test_a_wrong_row_fails_the_layout_check(tmp_path):
  wrong = ('| `config.dataset.name` | `manual_dir` holds | classes |\n|---|---|---|\n'
           '| `ade20k` | `ADEChallengeData2016/{images,annotations}/{training,validation}` '
           '| 150 |\n')
  paths, _ = dataset_rows(wrong)['ade20k']
  expanded = [p for pattern in paths for p in expand(pattern)]
  assert expanded[0] == 'ADEChallengeData2016/images/training' and len(expanded) == 4
  build_tree(tmp_path, expanded)
  with pytest.raises(FileNotFoundError, match='images/training'):
    data.manual_datasets()['ade20k'].check_layout(str(tmp_path))
