"""Every ``--conf`` option the app reads is in docs/configuration.md, and every option listed there is read.

Options are read through ``lib.conf.Conf`` (``options.bool("key", ...)``, ``.int``, ``.float``, ``.raw``,
``.path``, ``.list``). The code is read as a syntax tree, not run: a read is a call of one of those methods
on a name known to hold a ``Conf`` (assigned ``Conf(...)``, or a parameter annotated ``Conf``), whose key
is a string literal or an item of a module-level table of string literals (``PATH_OPTIONS[key]``). A read
the test cannot resolve fails the test instead of being skipped, and so does a ``--conf`` value taken from
MONAI Label's raw ``conf`` dict.

The page lists options in Markdown tables whose header starts with ``option``: the first cell names the
option(s) in backticks, then the default and the meaning. Environment variables have their own tables.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from conftest import APP, ROOT

DOC = ROOT / "docs" / "configuration.md"
CONF_METHODS = {"bool", "int", "float", "raw", "path", "list"}
RAW_CONF_NAMES = {"conf", "self.conf"}  # MONAI Label's dict of --conf strings, as the app receives it
READER = APP / "lib" / "conf.py"  # Conf itself


@dataclass
class Scan:
    options: dict[str, list[str]] = field(default_factory=dict)  # option -> where it is read
    problems: list[str] = field(default_factory=list)


def _is_conf_annotation(node: ast.expr | None) -> bool:
    text = ast.unparse(node) if node is not None else ""
    return text.strip("'\"").split(".")[-1] == "Conf"


def _is_conf_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "Conf"


def _string_tables(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level ``NAME = {...: "literal", ...}`` tables (computed option names, spelled out)."""
    tables = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            values = node.value.values
            if values and all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in values):
                for target in targets:
                    if isinstance(target, ast.Name):
                        tables[target.id] = [v.value for v in values]
    return tables


def _scopes(tree: ast.Module):
    """(scope node, names holding a Conf in it): the module, every function (its ``Conf``-annotated
    parameters and names assigned ``Conf(...)``, plus ``self.x = Conf(...)`` of its class)."""
    class_attrs: dict[ast.AST, set[str]] = {}
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef):
            class_attrs[cls] = {
                ast.unparse(t)
                for n in ast.walk(cls)
                if isinstance(n, ast.Assign) and _is_conf_call(n.value)
                for t in n.targets
                if isinstance(t, ast.Attribute)
            }

    def assigned(nodes) -> set[str]:
        return {
            ast.unparse(t)
            for n in nodes
            if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None and _is_conf_call(n.value)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        }

    yield tree, assigned(tree.body)  # module-level names are seen by every function
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = fn.args
            params = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs] if _is_conf_annotation(a.annotation)}
            names = params | assigned(ast.walk(fn))
            owner = parents.get(fn)
            while owner is not None and not isinstance(owner, ast.ClassDef):
                owner = parents.get(owner)
            if owner is not None:
                names |= class_attrs[owner]
            yield fn, names


def scan_source(source: str, where: str, scan: Scan) -> Scan:
    tree = ast.parse(source)
    tables = _string_tables(tree)
    seen: set[tuple[int, int]] = set()
    typed_calls: set[tuple[int, int]] = set()
    for scope, conf_names in _scopes(tree):
        for node in ast.walk(scope):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in CONF_METHODS or ast.unparse(node.func.value) not in conf_names:
                continue
            typed_calls.add((node.lineno, node.col_offset))
            if (node.lineno, node.col_offset) in seen:
                continue
            seen.add((node.lineno, node.col_offset))
            place = f"{where}:{node.lineno}"
            key = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "key"), None)
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                scan.options.setdefault(key.value, []).append(place)
            elif isinstance(key, ast.Subscript) and isinstance(key.value, ast.Name) and key.value.id in tables:
                for option in tables[key.value.id]:
                    scan.options.setdefault(option, []).append(place)
            else:
                scan.problems.append(
                    f"{place}: option key {ast.unparse(key) if key else '(none)'} is neither a string literal nor "
                    "an item of a module-level table of string literals"
                )
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CONF_METHODS:
            first = node.args[0] if node.args else None
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            if literal and (node.lineno, node.col_offset) not in typed_calls:
                scan.problems.append(
                    f"{where}:{node.lineno}: {ast.unparse(node.func)}({first.value!r}) looks like an option read on a "
                    "name not known to hold a Conf: annotate the parameter ': Conf' (or assign it Conf(...))"
                )
        raw_get = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and ast.unparse(node.func.value) in RAW_CONF_NAMES
        )
        raw_item = isinstance(node, ast.Subscript) and ast.unparse(node.value) in RAW_CONF_NAMES
        if raw_get or raw_item:
            scan.problems.append(f"{where}:{node.lineno}: {ast.unparse(node)} reads --conf around lib.conf.Conf")
    return scan


def scan_app() -> Scan:
    scan = Scan()
    for path in sorted(APP.rglob("*.py")):
        if path != READER:
            scan_source(path.read_text(), str(path.relative_to(ROOT)), scan)
    return scan


def documented_options(text: str) -> dict[str, list[str]]:
    """Option -> the other cells of its row, from the tables whose header starts with ``option``."""
    options: dict[str, list[str]] = {}
    header, in_options_table = True, False
    for line in text.splitlines():
        if not line.startswith("|"):
            header = True
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header:
            header, in_options_table = False, cells[0].lower().startswith("option")
        elif in_options_table and not re.fullmatch(r"[-: ]+", "".join(cells)):
            for name in re.findall(r"`([^`]+)`", cells[0]):
                options[name] = cells[1:]
    return options


# ----------------------------------------------------------------------------- the checks


def test_every_option_read_is_documented_and_every_documented_option_is_read():
    scan = scan_app()
    assert not scan.problems, "option reads the test cannot resolve:\n" + "\n".join(scan.problems)
    documented = documented_options(DOC.read_text())
    missing = {o: where for o, where in scan.options.items() if o not in documented}
    stale = sorted(set(documented) - set(scan.options))
    assert not missing, f"read in code but not in docs/configuration.md: {missing}"
    assert not stale, f"in docs/configuration.md but read nowhere in apps/wholebody: {stale}"


def test_every_documented_option_has_a_default_and_a_meaning():
    for option, cells in documented_options(DOC.read_text()).items():
        assert len(cells) >= 2 and all(cells[:2]), f"{option}: row needs a default and a meaning, got {cells}"


def test_the_scan_finds_options_the_app_is_known_to_read():
    """Not vacuous: reads on self.options (main.py), a local Conf (configs), a Conf-annotated helper
    parameter (TensorRT, PACS) and a table of spelled-out keys (official weights) are all found."""
    options = scan_app().options
    for option in ("model_dir", "models", "max_epochs", "trt_precision", "dicomweb_retry_s", "vista3d_path", "spleen_path"):
        assert option in options, f"{option} not found by the scan: {sorted(options)}"
    assert len(options) >= 30
    doc = documented_options(DOC.read_text())
    assert "model_dir" in doc and "dicomweb_credentials" in doc


def test_the_scan_resolves_literals_and_tables_and_flags_the_rest():
    source = '''
from lib.conf import Conf
TABLE = {"a": "a_path", "b": "b_path"}
class App:
    def __init__(self, conf):
        self.options = Conf(conf)
        self.options.int("on_self", 1)
        self.options.raw(f"{conf}_computed")
        conf.get("bypass")
def helper(options: Conf, key, other):
    options.bool("annotated", True)
    options.raw(TABLE[key])
    other.float("unknown_receiver", 1.0)
    tensor.float()
def local(conf):
    options = Conf(conf)
    return options.list(key="by_keyword", default=[])
'''
    scan = scan_source(source, "example.py", Scan())
    assert set(scan.options) == {"on_self", "annotated", "a_path", "b_path", "by_keyword"}
    problems = "\n".join(scan.problems)
    assert len(scan.problems) == 3, problems
    assert "_computed" in problems and "bypass" in problems and "unknown_receiver" in problems


def test_the_page_parser_reads_only_option_tables():
    text = """
| option | default | meaning |
| --- | --- | --- |
| `one` | `1` | first |
| `two`, `three` | none | two names, one row |

| environment variable | meaning |
| --- | --- |
| `NOT_AN_OPTION` | read from the environment |
"""
    assert documented_options(text) == {"one": ["`1`", "first"], "two": ["none", "two names, one row"],
                                        "three": ["none", "two names, one row"]}
