"""Every document the repository cites is in the repository: Markdown files
(`docs/methods.md`, `README.md`, ...) and paths under `docs/`, named in any text file."""
import fnmatch
import os
import re

from configs_util import ROOT
from rwsjax import record

TEXT_SUFFIXES = ('.py', '.md', '.toml', '.txt', '.cfg', '.ini', '.yaml', '.yml', '.sh')
# A path-like word ending in .md, or any path under docs/; not inside a URL or absolute path.
REFERENCE = re.compile(r'(?<![\w./:-])(?:[\w.-][\w./-]*\.md\b|docs/[\w./-]*\w)')


def ignored_dir_patterns(root):
  """Directory patterns of the root .gitignore (lines ending in '/'): build outputs, venvs."""
  path = os.path.join(root, '.gitignore')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [line.strip().rstrip('/') for line in f if line.strip().endswith('/')]


def text_files(root):
  """Paths of the text files under `root`, without hidden and ignored directories."""
  patterns = ignored_dir_patterns(root)
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith('.')
                        and not any(fnmatch.fnmatch(d, p) for p in patterns))
    yield from (os.path.join(directory, f) for f in sorted(files) if f.endswith(TEXT_SUFFIXES))


def missing_references(root):
  """(file, line number, reference) for each cited document that exists neither relative to
  the citing file nor to `root`. The tables a run writes (results.md, eval_<split>.md) are
  not documents."""
  missing = []
  for path in text_files(root):
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
      for reference in REFERENCE.findall(line):
        if any(fnmatch.fnmatch(os.path.basename(reference), table)
               for table in record.TABLE_FILES):
          continue
        if not any(os.path.exists(os.path.join(base, reference))
                   for base in (os.path.dirname(path), root)):
          missing.append((os.path.relpath(path, root), number, reference))
  return missing


def test_every_cited_document_is_in_the_repository():
  this_file = os.path.relpath(__file__, ROOT)  # its citations are made up on purpose
  assert [m for m in missing_references(ROOT) if m[0] != this_file] == []


def test_a_made_up_citation_is_reported(tmp_path):
  (tmp_path / 'docs').mkdir()
  (tmp_path / 'docs' / 'methods.md').write_text('See [the design](design.md).\n')
  (tmp_path / 'docs' / 'design.md').write_text('# Design\n')
  (tmp_path / 'README.md').write_text('Steps: docs/methods.md.\n![figure](docs/figure.png)\n')
  (tmp_path / 'module.py').write_text(
      '"""Selection (docs/methods.md RWS 6, METHODS.md RWS 6); writes results.md."""\n'
      '# https://example.com/guide.md\n')
  (tmp_path / '.gitignore').write_text('runs/\n')
  (tmp_path / 'runs').mkdir()
  (tmp_path / 'runs' / 'notes.md').write_text('old.md\n')
  assert missing_references(tmp_path) == [('README.md', 2, 'docs/figure.png'),
                                          ('module.py', 1, 'METHODS.md')]
