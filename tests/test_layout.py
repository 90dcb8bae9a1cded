"""The import graph README "Layout" states: the toolkit (rwsjax, but rwsjax.rws) imports no
method, RWS (rwsjax.rws) and ISIM (isimjax) import the toolkit and not each other, and no
module imports one that imports it back (the graph has no cycle, so no upward arrow)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('rwsjax', 'isimjax')


def module_files():
  """Module name -> file, for every module of the two packages."""
  found = {}
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(directory, name)
          module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
          found[module.removesuffix('.__init__')] = path
  return found


def import_graph():
  """Module -> the modules of the two packages it imports (anywhere in its file)."""
  files = module_files()
  graph = {}
  for module, path in files.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        imported.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module:
        imported.update(f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in files
                        else node.module for alias in node.names)
    graph[module] = {name for name in imported if name in files and name != module}
  return graph


def room(module):
  """'rws', 'isim' or 'toolkit'."""
  if module == 'rwsjax.rws' or module.startswith('rwsjax.rws.'):
    return 'rws'
  return 'isim' if module.split('.')[0] == 'isimjax' else 'toolkit'


ALLOWED = {'toolkit': {'toolkit'}, 'rws': {'toolkit', 'rws'}, 'isim': {'toolkit', 'isim'}}


def test_the_graph_is_read():
  graph = import_graph()
  assert 'rwsjax.models.registry' in graph['rwsjax.models.pretrained']
  assert 'rwsjax.train' in graph['rwsjax.rws.pipeline']
  assert 'rwsjax.rws.slices' in graph['rwsjax.rws.fusion']
  assert 'isimjax.self_train' in graph['isimjax.isim']


def test_each_room_imports_only_what_it_may():
  wrong = sorted(f'{module} -> {name}' for module, names in import_graph().items()
                 for name in names if room(name) not in ALLOWED[room(module)])
  assert not wrong, wrong


def find_cycle(graph):
  """A list of modules each importing the next and the last the first, or None."""
  done, active = set(), []

  def visit(module):
    if module in active:
      return active[active.index(module):]
    if module in done:
      return None
    active.append(module)
    for name in sorted(graph[module]):
      cycle = visit(name)
      if cycle:
        return cycle
    active.pop()
    done.add(module)
    return None

  for module in sorted(graph):
    cycle = visit(module)
    if cycle:
      return cycle
  return None


def test_no_import_cycle():
  assert find_cycle(import_graph()) is None


def test_the_checks_can_fail():
  """The room rule flags upward arrows, the cycle search a planted cycle."""
  assert room('rwsjax.stages') == 'toolkit' and room('rwsjax.rws.network') == 'rws'
  assert 'rws' not in ALLOWED[room('rwsjax.train')]
  assert 'isim' not in ALLOWED[room('rwsjax.rws.pipeline')]
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c']
  assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None
