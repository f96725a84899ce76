"""No function in nst_fast/ over 60 lines and no class over 250 (tools/unit_sizes.py)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("unit_sizes", ROOT / "tools" / "unit_sizes.py")
unit_sizes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(unit_sizes)

def test_no_unit_in_nst_fast_is_over_its_limit():
    over = unit_sizes.oversized(unit_sizes.units_under(ROOT / "nst_fast"))
    assert not over, "over the limits:\n" + "\n".join(map(str, over))


def _function(name, lines):
    """A function of exactly `lines` lines, its def line and docstring included."""
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 2))
    return f'def {name}():\n    """Docstring."""\n{body}'


def _class(name, lines):
    """A class of exactly `lines` lines holding one method."""
    return f"class {name}:\n" + "".join("    " + line + "\n"
                                        for line in _function("method", lines - 1).splitlines())


def test_a_61_line_function_is_listed_and_a_60_line_one_is_not():
    source = _function("short", 60) + "\n\n" + _function("long", 61)
    units = unit_sizes.units_in_source(source, "example.py")
    assert [(u.name, u.lines) for u in units] == [("short", 60), ("long", 61)]
    assert [str(u) for u in unit_sizes.oversized(units)] == ["example.py:63 long 61"]


def test_a_251_line_class_is_listed_and_a_250_line_one_is_not():
    source = _class("Small", 250) + "\n@decorator\n" + _class("Big", 251)
    over = unit_sizes.oversized(unit_sizes.units_in_source(source, "example.py"), function_limit=250)
    assert [str(u) for u in over] == ["example.py:253 Big 251"]  # from the class line, not the decorator


def test_methods_and_nested_functions_carry_qualified_names():
    source = "class Outer:\n    def method(self):\n        def inner():\n            pass\n"
    units = unit_sizes.units_in_source(source)
    assert [(u.name, u.line, u.lines) for u in units] == [
        ("Outer", 1, 4), ("Outer.method", 2, 3), ("Outer.method.inner", 3, 2)]


def test_the_script_exits_1_listing_what_is_over_and_0_when_nothing_is(tmp_path, capsys):
    package = tmp_path / "package"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "mod.py").write_text(_function("small", 10) + "\n" + _function("large", 30))
    assert unit_sizes.main([str(package), "--limit-function", "20"]) == 1
    assert capsys.readouterr().out == "package/sub/mod.py:12 large 30\n"
    assert unit_sizes.main([str(package), "--limit-function", "30"]) == 0
    assert capsys.readouterr().out == ""
    assert unit_sizes.main([str(package), "--table", "1"]) == 0
    assert capsys.readouterr().out == "package/sub/mod.py:12 large 30\n"
