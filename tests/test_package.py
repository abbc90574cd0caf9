"""The package's public names load on first use and all resolve."""

import doctest

import pytest

import lrtrain


def test_every_public_name_resolves_and_the_package_docstring_runs():
    for name in lrtrain.__all__:
        assert getattr(lrtrain, name) is not None, name
    assert set(lrtrain.__all__) <= set(dir(lrtrain))
    assert doctest.testmod(lrtrain).failed == 0


def test_unknown_names_and_dunder_probes_raise_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        lrtrain.nothing_here
    assert not hasattr(lrtrain, "__wrapped__")


def test_the_version_is_the_packages_own(capsys):
    import ast
    import tomllib
    from pathlib import Path

    from lrtrain import cli

    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    # one home: the package metadata reads lrtrain.__version__
    assert pyproject["project"]["dynamic"] == ["version"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lrtrain.__version__"}
    # as a literal, which setuptools reads from the file without importing lrtrain (and torch)
    module = ast.parse((root / "src" / "lrtrain" / "__init__.py").read_text())
    literals = [node.value.value for node in module.body if isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
                and isinstance(node.value, ast.Constant)]
    assert literals == [lrtrain.__version__]
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"lrtrain {lrtrain.__version__}\n"
