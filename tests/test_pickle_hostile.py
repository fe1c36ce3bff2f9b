"""Hostile DeepMind-style pickles: nothing the file names runs, and every bomb ends in seconds.

The reader (relic/interop/pickle_reader.py) rebuilds numpy arrays, containers and inert
placeholders; deepmind.py walks what it rebuilt. Each file here is a few bytes to a few MB
written opcode by opcode (or by ``pickle`` from objects whose ``__reduce__`` says what to
write), and goes through ``load_encoder`` as a user's ``.pkl`` would, under a deadline so
that a reader which hangs fails the test instead of stalling the suite. Two files also go
through ``python -m relic.interop.import_deepmind``: the command line is a separate entry
point, and one of the bombs crashes a process that is not protected.
"""

import contextlib
import copyreg
import io
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from relic.interop import load_encoder, pickle_reader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 10  # every hostile file must be refused well within this


# ----------------------------------------------------------------------------- writing pickles


def _global(module, name):
  return b"c" + f"{module}\n{name}\n".encode()


def _str(text):
  data = text.encode()
  return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _put(index):
  return b"r" + struct.pack("<I", index)  # LONG_BINPUT


def _get(index):
  return b"j" + struct.pack("<I", index)  # LONG_BINGET


def _int(value):
  return b"J" + struct.pack("<i", value)  # BININT


def _arg(value):
  if isinstance(value, str):
    return _str(value)
  if isinstance(value, int):
    return _int(value)
  return b"](" + b"".join(_arg(v) for v in value) + b"e"  # a list


def _call(module, name, *args):
  """``module.name(*args)`` as GLOBAL, MARK, args, TUPLE, REDUCE."""
  return _global(module, name) + b"(" + b"".join(_arg(a) for a in args) + b"tR"


def _experiment_state(body):
  """``{'experiment_state': <body>}``, the shape of DeepMind's checkpoints, protocol 2."""
  return b"\x80\x02}" + _str("experiment_state") + body + b"s."


class _Reduce:
  """Pickles as ``fn(*args)`` (then ``__setstate__(state)``), whatever ``fn`` would refuse."""

  def __init__(self, fn, args, state=None):
    self.fn, self.args, self.state = fn, args, state

  def __reduce__(self):
    return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


_RECONSTRUCT, _SCALAR = np.zeros(0).__reduce__()[0], np.float32(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]


@contextlib.contextmanager
def deadline(seconds=DEADLINE_S):
  """Raises TimeoutError in the test if the block is still running after ``seconds``."""
  def expire(signum, frame):
    del signum, frame
    raise TimeoutError(f"still running after {seconds} s")
  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def load_file(tmp_path, data, name="hostile.pkl"):
  """``load_encoder`` on ``data`` written to a file, under the deadline."""
  path = tmp_path / name
  path.write_bytes(data)
  with deadline():
    return load_encoder(str(path))


def read(data):
  """``pickle_reader.load`` on bytes, under the deadline."""
  with deadline():
    return pickle_reader.load(io.BytesIO(data))


# ----------------------------------------------------------------------------- a real checkpoint


def tiny_haiku_resnet(seed=0):
  """Haiku (params, state) of BYOL's ResNetTorso with one bottleneck block per group and a stem
  of 4 channels (module 'tiny_res_net'), as numpy arrays named the way DeepMind's files are."""
  rng = np.random.default_rng(seed)
  prefix, params, state = "tiny_res_net/~/", {}, {}

  def conv(name, size, inputs, outputs):
    params[prefix + name] = {"w": rng.normal(0, 0.1, (size, size, inputs, outputs)).astype(
        np.float32)}

  def batchnorm(name, channels):
    shape = (1, 1, 1, channels)
    params[prefix + name] = {"scale": rng.uniform(0.5, 1.5, shape).astype(np.float32),
                             "offset": rng.normal(0, 0.1, shape).astype(np.float32)}
    for ema in ("mean_ema", "var_ema"):
      value = rng.uniform(0.1, 1, shape).astype(np.float32)
      state[f"{prefix}{name}/~/{ema}"] = {"hidden": value, "average": value,
                                         "counter": np.array(3, np.int32)}

  conv("initial_conv", 7, 3, 4)
  batchnorm("initial_batchnorm", 4)
  inputs = 4
  for group, channels in enumerate((16, 32, 64, 128)):
    block = f"block_group_{group}/~/block_0/~/"
    for layer, (size, cin, cout) in enumerate(((1, inputs, channels // 4),
                                               (3, channels // 4, channels // 4),
                                               (1, channels // 4, channels))):
      conv(f"{block}conv_{layer}", size, cin, cout)
      batchnorm(f"{block}batchnorm_{layer}", cout)
    conv(f"{block}shortcut_conv", 1, inputs, channels)
    batchnorm(f"{block}shortcut_batchnorm", channels)
    inputs = channels
  return params, state


def test_a_deepmind_checkpoint_with_inert_names_and_shared_data_still_loads(tmp_path):
  """A BYOL-like namedtuple state (a placeholder) whose first field, walked first, is a DAG of
  2**64 paths, next to a callable nobody may call: read in well under the deadline."""
  params, state = tiny_haiku_resnet()
  first = 100_000  # memo indices of the DAG, past those of the pickled network
  dag = b"]" + _put(first)
  for level in range(1, 65):
    dag += b"0]" + _put(first + level) + b"(" + _get(first + level - 1) * 2 + b"e"
  # A whole pickle of the network, spliced without its PROTO and STOP into the state tuple.
  body = pickle.dumps(dict(params=params, state=state), protocol=2)[2:-1]
  data = (b"\x80\x02}" + _str("experiment_state") + _global("byol.byol_experiment", "State")
          + b"(" + dag + body + _call("os", "system", "touch /tmp/relic_hostile_pwned")
          + b"t\x81" + b"s" + _str("rng") + _call("os", "system", "true") + b"s.")
  start = time.perf_counter()
  model, variables = load_file(tmp_path, data)
  assert time.perf_counter() - start < 5
  assert model.stage_sizes == (1, 1, 1, 1)
  np.testing.assert_array_equal(variables["params"]["conv_init"]["kernel"],
                                params["tiny_res_net/~/initial_conv"]["w"])
  assert not os.path.exists("/tmp/relic_hostile_pwned")


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("module,name", [
    ("numpy.f2py.__main__", "_reconstruct"),  # importing it runs f2py's command line
    ("numpy.f2py.crackfortran", "EvilDType"),
    ("numpy.testing", "scalar"),
    ("numpy.distutils.core", "setup"),
    ("numpy.ctypeslib", "load_library"),
    ("numpy.lib.npyio", "load"),
    ("numpy", "load"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.core", "_reconstruct"),  # right name, wrong module
])
def test_numpy_names_outside_the_allow_list_are_refused_before_any_import(tmp_path, monkeypatch,
                                                                          module, name):
  monkeypatch.setattr(sys, "argv", ["relic"])  # f2py's command line reads it, if imported
  before = set(sys.modules)
  with pytest.raises(ValueError, match=re.escape(f"'{module}.{name}'")):
    load_file(tmp_path, _experiment_state(_call(module, name, "x")))
  assert not {m for m in set(sys.modules) - before if m.startswith("numpy")}


@pytest.mark.parametrize("module,name", [
    ("relic_hostile_probe", "run"),
    ("os", "system"),
    ("subprocess", "Popen"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("importlib", "import_module"),
    ("haiku._src.base", "new_context"),
    ("dill._dill", "_load_type"),
])
def test_other_unknown_names_are_inert_placeholders_never_imported_or_called(
    tmp_path, monkeypatch, module, name):
  sentinel = tmp_path / "ran"
  (tmp_path / "relic_hostile_probe.py").write_text(
      f"open({str(sentinel)!r}, 'w').close()\ndef run(*args):\n  pass\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  args = {"system": f"touch {sentinel}", "Popen": ["touch", str(sentinel)],
          "eval": f"open({str(sentinel)!r}, 'w')", "exec": f"open({str(sentinel)!r}, 'w')",
          "getattr": "relic_hostile_probe"}.get(name, "relic_hostile_probe")
  tree = read(_experiment_state(_call(module, name, args)))
  value = tree["experiment_state"]
  assert isinstance(value, pickle_reader.Opaque) and value.pickled_as == f"{module}.{name}"
  assert value.children() == [args]
  time.sleep(0.05)  # a Popen would have touched the file by now
  assert not sentinel.exists() and "relic_hostile_probe" not in sys.modules
  with pytest.raises(ValueError, match="no Haiku ResNet found"):
    load_file(tmp_path, _experiment_state(_call(module, name, args)))
  assert not sentinel.exists()


@pytest.mark.parametrize("module,name", [("copyreg", "_reconstructor"),
                                         ("haiku._src.data_structures", "FlatMapping"),
                                         ("dill._dill", "_create_namedtuple")])
def test_resolved_callables_cannot_be_given_attributes(module, name):
  """BUILD on a resolved function would set its attributes for the whole process: renaming
  copyreg._reconstructor would make later protocol-0 pickles name another callable."""
  data = (b"\x80\x02" + _global(module, name) + b"N}(" + _str("__module__") + _str("os")
          + _str("__qualname__") + _str("system") + b"u\x86b.")
  try:
    with pytest.raises(ValueError, match=re.escape(f"{module}.{name}")):
      read(data)
  finally:
    copyreg._reconstructor.__module__, copyreg._reconstructor.__qualname__ = (
        "copyreg", "_reconstructor")


# ----------------------------------------------------------------------------- bombs


def _self_list():
  return _experiment_state(b"]" + _put(0) + _get(0) + b"a")


def _self_dict():
  return _experiment_state(b"}" + _put(0) + _str("online_params") + _get(0) + b"s")


def _mutual_cycle():
  return _experiment_state(b"]" + _put(0) + b"}" + _str("back") + _get(0) + b"sa")


def _placeholder_cycle():
  # A namedtuple-like placeholder whose state (BUILD) is itself.
  return _experiment_state(_global("byol.byol_experiment", "State") + b")\x81" + _put(0)
                           + _get(0) + b"b")


def _laughs(empty, add, levels=64):
  """``levels`` containers, each holding the previous one twice: 2**levels paths."""
  body = empty + _put(0)
  for level in range(1, levels + 1):
    body += b"0" + empty + _put(level) + b"(" + add(_get(level - 1)) + (b"e" if empty == b"]"
                                                                         else b"u")
  return _experiment_state(body)


def _deep(opener, closer, depth=10 ** 6):
  """Containers nested ``depth`` deep (a few bytes per level)."""
  return _experiment_state(opener * depth + closer * (depth - 1))


@pytest.mark.parametrize("data,message", [
    (_self_list(), "cycle"),
    (_self_dict(), "cycle"),
    (_mutual_cycle(), "cycle"),
    (_placeholder_cycle(), "cycle"),
    (_laughs(b"]", lambda ref: ref * 2), "no Haiku ResNet found"),
    (_laughs(b"}", lambda ref: _str("a") + ref + _str("b") + ref), "no Haiku ResNet found"),
    (_deep(b"]", b"a"), "nested more than"),
    # Hashing a key this deep overflows the C stack of any unprotected Python process.
    (b"\x80\x02}" + b")" + b"\x85" * 10 ** 6 + b"Ns.", "nested more than"),
    (b"\x80\x02](" + b"N" * 1_000_001 + b"e.", "more than 1,000,000"),
], ids=["self-list", "self-dict", "mutual-cycle", "placeholder-cycle", "laughs-list",
        "laughs-dict", "deep-lists", "deep-tuple-key", "wide-list"])
def test_bombs_end_in_seconds_with_an_error_that_names_them(tmp_path, data, message):
  start = time.perf_counter()
  with pytest.raises(ValueError, match=message):
    load_file(tmp_path, data)
  assert time.perf_counter() - start < 5


@pytest.mark.parametrize("value,message", [
    # numpy's pickle of an array, with a shape of 10**12 elements over 4 bytes of data.
    (_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
             (1, (10 ** 6, 10 ** 6), np.dtype("f4"), False, b"\0" * 4)), "claims shape"),
    (_Reduce(_FROMBUFFER, (b"\0" * 4, np.dtype("f4"), (10 ** 6, 10 ** 6), "C")), "claims shape"),
    (_Reduce(_RECONSTRUCT, (np.ndarray, (10 ** 6, 10 ** 6), b"b")), "claims shape"),
    # A direct call views 4 bytes as 10**12 floats (zero strides).
    (_Reduce(np.ndarray, ((10 ** 6, 10 ** 6), np.dtype("f4"), b"\0" * 4, 0, (0, 0))),
     "numpy.ndarray"),
    (np.array([1, "a"], dtype=object), "plain numeric"),
    (np.zeros(2, dtype=[("a", "f4")]), "plain numeric"),
    (_Reduce(_SCALAR, (np.dtype("V100"), b"")), "plain numeric"),
    # A float64 dtype whose flags say it holds objects: numpy would read the bytes as pointers.
    (_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
             (1, (2,), _Reduce(np.dtype, ("f8", False, True),
                               (3, "<", None, None, None, -1, -1, 0xFF)), False, b"\1" * 16)),
     "plain numeric"),
    # Fields on a float dtype: numpy hashes and compares them recursively.
    (_Reduce(np.dtype, ("f4", False, True),
             (3, "<", None, ("a",), {"a": (np.dtype("f4"), 0)}, 4, 1, 0)), "plain numeric"),
], ids=["shape", "frombuffer-shape", "reconstruct-shape", "strides", "object", "structured",
        "void-scalar", "object-flags", "fields"])
def test_arrays_are_plain_numbers_rebuilt_only_from_their_own_bytes(tmp_path, value, message):
  params, state = tiny_haiku_resnet()
  params["tiny_res_net/~/initial_conv"]["w"] = value
  data = pickle.dumps(dict(experiment_state=dict(online_params=params, online_state=state)),
                      protocol=2)
  with pytest.raises(ValueError, match=message):
    load_file(tmp_path, data)


def test_an_array_shared_under_many_names_cannot_outgrow_the_file(tmp_path):
  params, state = tiny_haiku_resnet()
  shared = np.zeros(1 << 14, np.float32)  # 64 KiB, stored once, named 64 times (4 MiB)
  params.update({f"tiny_res_net/~/copy_{i}": {"w": shared} for i in range(64)})
  data = pickle.dumps(dict(experiment_state=dict(online_params=params, online_state=state)),
                      protocol=2)
  with pytest.raises(ValueError, match="more array bytes than the file"):
    load_file(tmp_path, data)


def _shared_calls(callable_global, shared_args, times=1000):
  """``[callable(*args) for _ in range(times)]``, all calls given the one memoized ``args``."""
  calls = (_get(0) + _get(1) + b"Ra") * times
  return _experiment_state(callable_global + _put(0) + b"0" + shared_args + _put(1) + b"0]"
                           + calls)


_NONES = b"(" + b"N" * 2000 + b"t"  # a tuple of 2,000 Nones
_PAIRS = b"](" + b"".join(_int(i) + b"N\x86" for i in range(2000)) + b"e\x85"  # ([(i, None)],)


@pytest.mark.parametrize("data", [
    # A few KB whose calls would build two million dict entries, list slots or arguments.
    _shared_calls(_global("haiku._src.data_structures", "FlatMapping"), _PAIRS),
    _shared_calls(_global("builtins", "list"), b"](" + b"N" * 2000 + b"e\x85"),
    _shared_calls(_global("byol.byol_experiment", "State"), _NONES),
    _experiment_state(_call("builtins", "bytearray", 10 ** 8)),
    _experiment_state(_global("builtins", "list") + b"(" + _call("builtins", "range", 2 * 10 ** 6)
                      + b"tR"),
], ids=["flatmapping", "list", "placeholder", "bytearray", "range"])
def test_shared_or_counted_data_cannot_expand_past_the_file(tmp_path, data):
  with pytest.raises(ValueError, match="pickle bomb"):
    load_file(tmp_path, data)


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize("data,message", [
    (_experiment_state(_call("numpy.f2py.__main__", "_reconstruct", "x")),
     "numpy.f2py.__main__._reconstruct"),
    (b"\x80\x02}" + b")" + b"\x85" * 10 ** 6 + b"Ns.", "nested more than"),
], ids=["numpy-module", "deep-tuple-key"])
def test_import_cli_refuses_hostile_files_with_the_reason(tmp_path, data, message):
  path = tmp_path / "hostile.pkl"
  path.write_bytes(data)
  result = subprocess.run(
      [sys.executable, "-m", "relic.interop.import_deepmind", f"--checkpoint={path}",
       f"--out={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, timeout=60,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode not in (0, -signal.SIGSEGV), result.stderr[-2000:]
  assert message in result.stderr
  assert not (tmp_path / "out").exists()
