"""The layers point down only: scripts -> evaluation.command_line -> evaluation.reporting ->
evaluation (estimators) -> inference -> models -> models.utilities -> models.base.
This test reads the import statements of every module (including imports inside functions) and
fails when one points up a layer, and when a script imports another (what two scripts share
belongs to the library)."""

import ast
import os

from conftest import ROOT

#: (module prefix, layer), most specific first; higher layers may import lower ones
LAYERS = (
    ("models.base", 0),
    ("models.utilities", 1),
    ("models", 2),
    ("inference", 3),
    ("evaluation.command_line", 6),
    ("evaluation.reporting", 5),
    ("evaluation", 4),
    ("scripts", 7),
)
LAYER_NAMES = {0: "models.base", 1: "models.utilities", 2: "models", 3: "inference",
               4: "evaluation (estimators)", 5: "evaluation.reporting",
               6: "evaluation.command_line", 7: "scripts"}


def layer_of(module):
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def modules(root):
    """(dotted module name, path) of every Python file of the layered folders under root."""
    for top in ("models", "inference", "evaluation", "scripts"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                    yield dotted.removesuffix(".__init__"), path


def imported(module, path):
    """Every module name that ``module`` imports, absolute, with the line of the import."""
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield name, node.lineno
            for alias in node.names:  # ``from evaluation import story`` imports a module
                yield f"{name}.{alias.name}", node.lineno


def upward_imports(root):
    """['path:line: module (layer) imports target (higher layer)'] for every upward import."""
    found, seen = [], set()
    for module, path in modules(root):
        own = layer_of(module)
        for target, line in imported(module, path):
            layer = layer_of(target)
            if own is not None and layer is not None and layer > own and (path, line) not in seen:
                seen.add((path, line))
                found.append(f"{os.path.relpath(path, root)}:{line}: {module} "
                             f"({LAYER_NAMES[own]}) imports {target} ({LAYER_NAMES[layer]})")
    return found


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(ROOT) == []


def test_the_layer_check_finds_an_upward_import(tmp_path):
    for folder in ("models/base", "inference", "evaluation/reporting", "scripts"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "models" / "base" / "config.py").write_text(
        "def late():\n    from inference.checkpoint import read_checkpoint\n")
    (tmp_path / "inference" / "checkpoint.py").write_text("import models.base.config\n")
    (tmp_path / "evaluation" / "story.py").write_text("from .reporting import figures\n")
    found = sorted(upward_imports(tmp_path))
    assert found == [
        "evaluation/story.py:1: evaluation.story (evaluation (estimators)) imports "
        "evaluation.reporting (evaluation.reporting)",
        "models/base/config.py:2: models.base.config (models.base) imports inference.checkpoint "
        "(inference)"]


#: calls that load a module from a file or by a name given as text: a script that made one
#: could run another script without an import statement
LOADERS = {"script_module", "spec_from_file_location", "run_path", "run_module", "import_module",
           "__import__", "load_script"}


def script_imports(root):
    """['path:line: what'] for every place where a file under scripts/ imports another script:
    an import of ``scripts`` or ``scripts.*``, a relative import, an import of a sibling
    script by its bare name (``import train``: scripts/ is on the path of a script it runs),
    ``runpy``, or a call that loads a module from a path or a name (:data:`LOADERS`). What two
    scripts share belongs to the library."""
    folder = os.path.join(root, "scripts")
    names = sorted(name for name in os.listdir(folder) if name.endswith(".py"))
    siblings = {name[:-3] for name in names}
    found = []
    for name in names:
        path = os.path.join(folder, name)
        with open(path) as handle:
            tree = ast.parse(handle.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Call):
                function = node.func
                called = function.attr if isinstance(function, ast.Attribute) else \
                    getattr(function, "id", None)
                if called in LOADERS:
                    found.append(f"scripts/{name}:{node.lineno}: calls {called}")
                continue
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if target.startswith(".") or top in ("scripts", "runpy") or top in siblings:
                    found.append(f"scripts/{name}:{node.lineno}: imports {target}")
    return found


def test_no_script_imports_another():
    assert script_imports(ROOT) == []


def test_the_script_check_finds_a_script_that_imports_another(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "train.py").write_text("from evaluation import command_line as cli\n"
                                      "import os\n")
    (scripts / "explore.py").write_text("import scripts.train\nfrom scripts import train\n")
    (scripts / "tutorial.py").write_text(
        "import importlib.util\n\n\ndef late():\n    import train\n"
        "    spec = importlib.util.spec_from_file_location('t', 'scripts/train.py')\n")
    (scripts / "flags.py").write_text(
        "import runpy\nfrom evaluation import command_line as cli\n"
        "cli.script_module('scripts/train.py')\nrunpy.run_path('scripts/train.py')\n"
        "from . import train\n")
    assert sorted(script_imports(tmp_path)) == [
        "scripts/explore.py:1: imports scripts.train",
        "scripts/explore.py:2: imports scripts",
        "scripts/flags.py:1: imports runpy",
        "scripts/flags.py:3: calls script_module",
        "scripts/flags.py:4: calls run_path",
        "scripts/flags.py:5: imports .",
        "scripts/tutorial.py:5: imports train",
        "scripts/tutorial.py:6: calls spec_from_file_location"]


def readme_layout(root):
    """The folders the README's "## Layout" block names, top line first."""
    with open(os.path.join(root, "README.md")) as handle:
        text = handle.read()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return [line.split()[0].rstrip("/") for line in block.splitlines()
            if line.strip() and not line[0].isspace()]   # indented lines continue the one above


def test_the_readme_layout_names_every_layer_from_the_top_down():
    """The README's layout is the layer order this file checks, each folder it names exists,
    and no top-level folder of Python code escapes the layers (the check above reads only the
    layered folders)."""
    folders = readme_layout(ROOT)
    for folder in folders:
        assert os.path.isdir(os.path.join(ROOT, folder)), f"README names {folder}/, absent"
    layered = [folder.replace("/", ".") for folder in folders
               if layer_of(folder.replace("/", ".")) is not None]
    assert [layer_of(name) for name in layered] == sorted(LAYER_NAMES, reverse=True), layered
    assert [LAYER_NAMES[layer_of(name)].split()[0] for name in layered] == layered
    code = {entry.name for entry in os.scandir(ROOT)
            if entry.is_dir() and not entry.name.startswith(".") and any(
                name.endswith(".py") for name in os.listdir(entry.path))}
    assert code <= {prefix.split(".")[0] for prefix, _ in LAYERS} | {"tests"}, code
    assert code <= set(folders), code
