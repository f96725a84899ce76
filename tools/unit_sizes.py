"""List the functions and classes in nst_fast/ too long to hold in one's head.

A unit's length runs from its def/class line (decorators excluded) to its last
line, docstring included. Prints PATH:LINE NAME LINES for each unit over its
limit, largest first, and exits 1 if there is any; with --table N, prints the
N largest units whatever their size and exits 0.

    python tools/unit_sizes.py [--limit-function 60] [--limit-class 250] [ROOT]
    python tools/unit_sizes.py --table 10
"""

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

FUNCTION_LIMIT = 60
CLASS_LIMIT = 250
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "nst_fast"


@dataclass(frozen=True)
class Unit:
    path: str
    line: int
    name: str  # qualified: Class.method, outer.inner
    lines: int
    is_class: bool

    def __str__(self):
        return f"{self.path}:{self.line} {self.name} {self.lines}"


def units_in_source(source, path="<source>"):
    """Every function, method and class in `source`, nested ones included."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                found.append(Unit(path, child.lineno, name,
                                  child.end_lineno - child.lineno + 1,
                                  isinstance(child, ast.ClassDef)))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=path), "")
    return found


def units_under(root):
    """Every unit in the .py files under `root`, paths relative to root's parent."""
    root = Path(root)
    units = []
    for file in sorted(root.rglob("*.py")):
        shown = file.relative_to(root.parent).as_posix()
        units.extend(units_in_source(file.read_text(encoding="utf-8"), shown))
    return units


def largest_first(units):
    return sorted(units, key=lambda u: (-u.lines, u.path, u.line))


def oversized(units, function_limit=FUNCTION_LIMIT, class_limit=CLASS_LIMIT):
    """The units longer than their limit, largest first."""
    return largest_first(
        u for u in units if u.lines > (class_limit if u.is_class else function_limit))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=DEFAULT_ROOT, type=Path)
    parser.add_argument("--limit-function", type=int, default=FUNCTION_LIMIT)
    parser.add_argument("--limit-class", type=int, default=CLASS_LIMIT)
    parser.add_argument("--table", type=int, metavar="N",
                        help="print the N largest units and exit 0")
    args = parser.parse_args(argv)
    units = units_under(args.root)
    if args.table is not None:
        for unit in largest_first(units)[:args.table]:
            print(unit)
        return 0
    over = oversized(units, args.limit_function, args.limit_class)
    for unit in over:
        print(unit)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
