"""Packaging: the exact lock (requirements.txt) lies inside setup.py's ranges and pins every
direct dependency; every third-party import is declared; licence and citation files are there."""

import ast
import pathlib
import re
import runpy
import sys
from importlib import metadata

import pytest
import setuptools
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Top-level import name -> distribution, for the third-party modules relic and its configs import.
IMPORT_TO_DIST = {
    "jax": "jax", "flax": "flax", "optax": "optax", "chex": "chex", "orbax": "orbax-checkpoint",
    "ml_collections": "ml-collections", "absl": "absl-py", "etils": "etils",
    "tensorflow": "tensorflow-cpu", "tensorflow_datasets": "tensorflow-datasets", "clu": "clu",
    "PIL": "pillow", "numpy": "numpy",
}
# Imported only by the PyTorch export (relic/interop), on first use: the [test] extra has them.
OPTIONAL = {"torch": "torch", "torchvision": "torchvision", "safetensors": "safetensors"}


@pytest.fixture(scope="module")
def setup_kwargs(monkeypatch_module):
  captured = {}
  monkeypatch_module.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
  runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
  return captured


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as patch:
    yield patch


def lock() -> list[Requirement]:
  lines = (ROOT / "requirements.txt").read_text().splitlines()
  return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def by_name(requirements) -> dict[str, list[Requirement]]:
  out = {}
  for r in requirements:
    out.setdefault(canonicalize_name(r.name), []).append(r)
  return out


def test_lock_pins_every_direct_dependency_inside_the_ranges(setup_kwargs):
  ranges = by_name(Requirement(r) for r in setup_kwargs["install_requires"])
  pins = by_name(lock())
  assert set(pins) == set(ranges), "requirements.txt and install_requires name different packages"
  for name, requirements in pins.items():
    for pin in requirements:
      (version,) = [s.version for s in pin.specifier if s.operator == "=="] or [None]
      assert version and len(pin.specifier) == 1, f"requirements.txt: pin {pin} exactly (==)"
      matching = [r for r in ranges[name] if str(r.marker) == str(pin.marker)]
      assert matching, f"{pin}: no install_requires entry with the same environment marker"
      assert matching[0].specifier.contains(version), f"{pin} is outside {matching[0]}"
      assert matching[0].extras == pin.extras, f"{pin} vs {matching[0]}: extras differ"
      assert any(s.operator == "<" for s in matching[0].specifier), f"{matching[0]}: no upper bound"


def test_tensorflow_wheel_by_machine(setup_kwargs):
  """tensorflow-cpu has no aarch64 / arm64 wheels: those machines get tensorflow."""
  for requirements in (lock(), [Requirement(r) for r in setup_kwargs["install_requires"]]):
    for machine, expected in [("x86_64", "tensorflow-cpu"), ("AMD64", "tensorflow-cpu"),
                              ("aarch64", "tensorflow"), ("arm64", "tensorflow")]:
      env = {"platform_machine": machine}
      chosen = {r.name for r in requirements if r.name.startswith("tensorflow")
                and r.name != "tensorflow-datasets" and (r.marker is None or r.marker.evaluate(env))}
      assert chosen == {expected}, (machine, chosen)


def test_the_environment_is_the_lock():
  """This environment runs the versions of the lock (.ci/run installs it first)."""
  for pin in lock():
    if pin.marker is None or pin.marker.evaluate():
      (spec,) = pin.specifier
      assert metadata.version(pin.name) == spec.version, f"installed {pin.name} is not {spec}"


def test_extras(setup_kwargs):
  extras = setup_kwargs["extras_require"]
  jax_range = next(r for r in setup_kwargs["install_requires"] if r.startswith("jax>"))
  for accelerator in ("cuda12", "cuda13", "tpu"):
    (requirement,) = map(Requirement, extras[accelerator])
    assert requirement.name == "jax" and requirement.extras == {accelerator}
    assert str(requirement.specifier) == str(Requirement(jax_range).specifier)
  test = by_name(map(Requirement, extras["test"]))
  for name in ("timm", "safetensors", "torch", "torchvision", "dm-haiku"):
    (requirement,) = test[name]
    (spec,) = requirement.specifier
    assert spec.operator == "==" and metadata.version(name) == spec.version, requirement


def test_every_third_party_import_is_declared(setup_kwargs):
  declared = {canonicalize_name(Requirement(r).name) for r in setup_kwargs["install_requires"]}
  test_extra = {canonicalize_name(Requirement(r).name) for r in setup_kwargs["extras_require"]
                ["test"]}
  for path in sorted([*ROOT.glob("relic/**/*.py"), *ROOT.glob("configs/*.py")]):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        modules = [node.module]
      else:
        continue
      for module in modules:
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in ("relic", "__future__"):
          continue
        where = f"{path.relative_to(ROOT)}:{node.lineno} imports {module}"
        if top in OPTIONAL:
          assert "interop" in path.parts, f"{where}: only the PyTorch export may import it"
          assert canonicalize_name(OPTIONAL[top]) in test_extra, where
          continue
        assert top in IMPORT_TO_DIST, f"{where}: declare it in setup.py and this test's table"
        assert canonicalize_name(IMPORT_TO_DIST[top]) in declared, where


def test_configs_ship_inside_the_package(setup_kwargs):
  assert "relic.configs" in setup_kwargs["packages"]
  assert setup_kwargs["package_dir"] == {"relic.configs": "configs"}
  assert (ROOT / "configs" / "__init__.py").is_file()
  assert canonicalize_name(setup_kwargs["name"]) != "relic"  # PyPI's 'relic' is another project


def test_every_source_folder_ships(setup_kwargs):
  # A folder without __init__.py is skipped by find_packages: a non-editable install would lack
  # it while an editable one (and so the rest of the suite) still imports it from the checkout.
  folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "relic").rglob("*.py")
             if "__pycache__" not in p.parts}
  missing = sorted(folders - set(setup_kwargs["packages"]))
  assert not missing, f"not shipped (add an __init__.py): {missing}"


def test_licence_and_citation(setup_kwargs):
  licence = (ROOT / "LICENSE").read_text()
  assert "Apache License" in licence and "Version 2.0, January 2004" in licence
  assert "END OF TERMS AND CONDITIONS" in licence and "The relic authors" in licence
  assert setup_kwargs["license"] == "Apache-2.0"
  assert setup_kwargs["python_requires"] == ">=3.11"
  yaml = pytest.importorskip("yaml")
  citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
  assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
  assert citation["license"] == "Apache-2.0"
  paper = citation["preferred-citation"]
  assert paper["doi"] == "10.48550/arXiv.2201.05119" and paper["year"] == 2022
  assert [a["family-names"] for a in paper["authors"]] == [
      "Tomasev", "Bica", "McWilliams", "Buesing", "Pascanu", "Blundell", "Mitrovic"]
  readme = (ROOT / "README.md").read_text()
  assert re.search(r"^## Citation$", readme, re.M), "README: a '## Citation' section"
  bibtex = readme[readme.index("## Citation"):]
  assert "@article{tomasev2022pushing" in bibtex and "arXiv:2201.05119" in bibtex
