"""Two guarantees of the training loop and its start-up, checked on real runs (8 simulated
devices, the quickstart's ``runlocal`` pretraining and a tiny fine-tuning / linear probe):

  * a train state holding NaN/Inf is never checkpointed, whatever part of it overflowed (the
    parameters, the BatchNorm statistics, the EMA target, the optimiser state), even when the
    loss and the gradients that produced it were finite: the step is named, 'stop' saves
    nothing of it and 'skip' drops it;
  * a resume that is refused (a changed batch size, width, depth or objective; with the
    workdir's config.json or, when it is missing, the checkpoint's own saved config as the
    reference) is refused by name before anything is written, leaves the workdir
    byte-identical, and the original command still resumes there afterwards.
"""

import hashlib
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic import checkpoints, main, resume_check
from relic.errors import ConfigError
from relic.jobs import pretrain
from relic.train import divergence, finetune_step, heads_step, loop
from relic.train.states import FinetuneState
from tests.test_eval_jobs import TINY_MODEL, eval_config, write_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = "configs/quickstart.py:runlocal"
NUM_STEPS = 6
# The pretraining every test below starts from, as command-line overrides of QUICKSTART (so the
# subprocess test runs the same experiment): a checkpoint after every step, all of them kept.
OVERRIDES = {"train.num_steps": NUM_STEPS, "train.checkpoint_every_steps": 1,
             "train.keep_checkpoints": NUM_STEPS, "train.log_every_steps": 1,
             "train.eval_every_steps": 0, "train.view_images": 0, "evaluators.final": ()}
# Where the pretraining of record overflows (loop step -> the part of the updated train state
# that gets an Inf); its loss and gradients stay finite at those steps.
PRETRAIN_OVERFLOWS = {1: "online_params", 2: "online_batch_stats", 3: "target_params",
                      4: "opt_state"}
FINETUNE_OVERFLOWS = {1: "params", 2: "batch_stats", 3: "opt_state"}


def pretrain_config(**changes):
  config = main.load_config_file(QUICKSTART)
  for field, value in {**OVERRIDES, **changes}.items():
    *sections, name = field.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[name] = value
  return config


def finetune_config(pretrained: str, **finetune):
  """6 steps of batch 32 on 200 built-in images, a checkpoint after every step."""
  config = eval_config("finetune", pretrained)
  config.finetune.update({**dict(batch_size=32, num_epochs=0.96, image_size=32, base_lr=0.05,
                                 log_every_steps=1, checkpoint_every_steps=1,
                                 keep_checkpoints=NUM_STEPS), **finetune})
  return config


def overflow_at(parts: dict[int, str]):
  """A wrapper of an (un-jitted) step function: after the update of loop step k, one element of
  the state's field ``parts[k]`` becomes +Inf, as an overflow in the update would make it,
  while the step's loss and gradients are left as they were."""
  def wrap(step_fn):
    def step(state, *inputs):
      new_state, metrics = step_fn(state, *inputs)
      changed = {}
      for at, part in parts.items():
        tree = changed.get(part, getattr(new_state, part))
        leaves, treedef = jax.tree.flatten(tree)
        i = max(j for j, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.floating))
        flat = leaves[i].reshape(-1)
        flat = flat.at[0].set(jnp.where(state.step == at, jnp.inf, flat[0]))
        leaves[i] = flat.reshape(leaves[i].shape)
        changed[part] = jax.tree.unflatten(treedef, leaves)
      return new_state.replace(**changed), metrics
    return step
  return wrap


def recording_divergence(monkeypatch) -> dict[int, bool]:
  """The loop's view of every step: loop step -> whether the step counted as finite."""
  seen: dict[int, bool] = {}

  class Recording(divergence.Divergence):
    def update(self, step, finite):
      seen[step] = bool(finite)
      super().update(step, finite)

  monkeypatch.setattr(loop, "Divergence", Recording)
  return seen


def saved_steps(workdir) -> list[int]:
  try:
    return sorted(int(d.name) for d in checkpoints.step_dirs(str(workdir)))
  except FileNotFoundError:
    return []


def non_finite_parts(workdir, step: int) -> list[str]:
  """The top-level parts of the state saved at ``step`` that hold NaN/Inf."""
  tree = checkpoints.read_state_part(checkpoints.checkpoint_dir(str(workdir)) / str(step),
                                     lambda tree: tree)
  return sorted(part for part, sub in tree.items()
                if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(sub)
                           if np.issubdtype(np.asarray(x).dtype, np.floating)))


def digest(root) -> dict[str, str]:
  """Every directory and file under ``root``: relative path -> 'dir' or the file's SHA-256."""
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*"))}


def run_with_overflows(config, workdir, module, factory: str, overflows) -> dict[int, bool]:
  """Runs the job with ``module.factory``'s step overflowing as ``overflows`` says; returns the
  loop's finite flag of every step."""
  with pytest.MonkeyPatch.context() as patch:
    flags = recording_divergence(patch)
    make = getattr(module, factory)
    patch.setattr(module, factory, lambda *a, **k: overflow_at(overflows)(make(*a, **k)))
    main.run(config, str(workdir))
  return flags


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
  """The pretraining of record: overflows in four parts of the state (PRETRAIN_OVERFLOWS) under
  ``nan_policy='skip'``, which drops them. Returns the workdir, the config and the loop's
  finite flag of every step."""
  workdir = tmp_path_factory.mktemp("pretrained")
  config = pretrain_config(**{"train.nan_policy": "skip", "train.max_skipped_steps": 4})
  flags = run_with_overflows(config, workdir, pretrain, "make_pretrain_step", PRETRAIN_OVERFLOWS)
  return workdir, config, flags


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory):
  """A fine-tuning run with overflows in three parts of its state (FINETUNE_OVERFLOWS) under
  ``nan_policy='skip'``: the workdir, the config, the finite flag of every step."""
  encoder = write_pretrained(tmp_path_factory.mktemp("encoder"), TINY_MODEL)
  workdir = tmp_path_factory.mktemp("finetuned")
  config = finetune_config(encoder)
  config.train.update(dict(nan_policy="skip", max_skipped_steps=3))
  flags = run_with_overflows(config, workdir, finetune_step, "make_train_step", FINETUNE_OVERFLOWS)
  return workdir, config, flags


# --- A non-finite state is never saved ---------------------------------------------------------

def assert_overflowed_steps_skipped_and_never_saved(run, overflows):
  """Exactly the steps whose state overflowed were flagged; every step was saved, all finite."""
  workdir, _, flags = run
  assert flags == {step: step not in overflows for step in range(NUM_STEPS)}
  assert saved_steps(workdir) == list(range(1, NUM_STEPS + 1))
  for step in saved_steps(workdir):
    assert non_finite_parts(workdir, step) == [], step


def test_pretraining_skips_every_step_whose_state_overflowed(pretrained_run):
  assert_overflowed_steps_skipped_and_never_saved(pretrained_run, PRETRAIN_OVERFLOWS)


def test_finetuning_skips_every_step_whose_state_overflowed(finetuned_run):
  assert_overflowed_steps_skipped_and_never_saved(finetuned_run, FINETUNE_OVERFLOWS)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_pretraining_update_overflow_stops_before_saving_it(tmp_path):
  """The reviewer's case: a huge rate, no warm-up, a checkpoint after every step. Step 0's loss
  and gradients are finite, its update is not: the run stops at step 0 and saves nothing."""
  config = pretrain_config(**{"optim.base_lr": 1e40, "optim.warmup_epochs": 0.0})
  with pytest.raises(divergence.DivergenceError) as err:
    main.run(config, str(tmp_path))
  message = str(err.value)
  assert "at step 0" in message and "no checkpoint was written yet" in message
  assert "online_params" in message                  # where the NaN/Inf is
  assert saved_steps(tmp_path) == []


def probe_config(encoder: str, **linear_probe):
  """The linear probe: 2 rates side by side, 5 steps of 32, a checkpoint after every step."""
  config = eval_config("linear_probe", encoder)
  config.linear_probe.update({**dict(batch_size=32, num_epochs=1.0, lr_grid=(0.1, 1.0),
                                     holdout_examples=40, image_size=32, log_every_steps=1,
                                     checkpoint_every_steps=1), **linear_probe})
  return config


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_linear_probe_update_overflow_stops_before_saving_it(tmp_path):
  """An evaluation job: one head of the probe's rate grid overflows in its first update."""
  encoder = write_pretrained(tmp_path / "encoder", TINY_MODEL)
  config = probe_config(encoder, lr_grid=(0.1, 1e40))
  with pytest.raises(divergence.DivergenceError, match="at step 0") as err:
    main.run(config, str(tmp_path / "run"))
  assert "no checkpoint was written yet" in str(err.value)
  assert saved_steps(tmp_path / "run") == []


def test_state_overflow_stops_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
  """The optimiser state alone overflows at step 2 of the linear probe: the run stops there,
  and the checkpoint it names as the last good one is the last written, and finite."""
  encoder = write_pretrained(tmp_path / "encoder", TINY_MODEL)
  make = heads_step.make_train_step
  monkeypatch.setattr(heads_step, "make_train_step",
                      lambda *a, **k: overflow_at({2: "opt_state"})(make(*a, **k)))
  with pytest.raises(divergence.DivergenceError, match="at step 2") as err:
    main.run(probe_config(encoder), str(tmp_path / "run"))
  assert "the last good checkpoint is step 2" in str(err.value)
  assert "NaN/Inf now in opt_state" in str(err.value)
  assert saved_steps(tmp_path / "run") == [1, 2]
  assert non_finite_parts(tmp_path / "run", 2) == []


def test_the_loop_never_saves_a_non_finite_state_whatever_the_step_reports(tmp_path):
  """The loop's own guard, for a step function that does not check its state: the state of
  step 2 overflows while the step reports it finite; it is refused at the save."""
  state = FinetuneState(step=jnp.zeros((), jnp.int32), params={"w": jnp.ones(3)},
                        batch_stats={}, opt_state=())

  @jax.jit
  def unchecked_step(state, batch):
    del batch
    w = jnp.where(state.step == 1, jnp.inf, state.params["w"] + 1.0)
    finite = {"loss": 0.0, "grad_norm": 0.0, "finite": True}
    return state.replace(step=state.step + 1, params={"w": w}), finite

  run = loop.Run(name="Unchecked", workdir=str(tmp_path), state=state, step_fn=unchecked_step,
                 batches=lambda start: iter(range(start, 3)), total_steps=3, global_batch=1,
                 meta={"config": {}}, check_resume=lambda meta: None, log_every_steps=1,
                 checkpoint_every_steps=1)
  with pytest.raises(divergence.DivergenceError,
                     match="the train state of step 2 holds NaN/Inf in params although"):
    loop.train(run)
  assert saved_steps(tmp_path) == [1]


# --- A refused resume writes nothing -----------------------------------------------------------

REFUSED = {"train.batch_size": 32, "model.base_width": 32, "model.depth": 50,
           "loss.objective": "simclr"}


def copy_run(source, target, config_json: bool) -> pathlib.Path:
  shutil.copytree(source, target)
  if not config_json:
    (target / "config.json").unlink()   # the checkpoints copied elsewhere without it
  return target


@pytest.mark.parametrize("config_json", [True, False], ids=["config.json", "no config.json"])
@pytest.mark.parametrize("field", list(REFUSED))
def test_refused_pretraining_resume_leaves_the_workdir_as_it_was(pretrained_run, tmp_path, field,
                                                                 config_json):
  source, original, _ = pretrained_run
  workdir = copy_run(source, tmp_path / "run", config_json)
  before = digest(workdir)
  saved = pretrain_config()
  for part in field.split("."):
    saved = saved[part]
  with pytest.raises(ConfigError) as err:
    main.run(pretrain_config(**{field: REFUSED[field]}), str(workdir))
  assert f"{field}: saved {saved!r}, now {REFUSED[field]!r}" in str(err.value)
  assert digest(workdir) == before
  resume_check.check_workdir(original, str(workdir))    # the original command is accepted


def test_original_command_resumes_after_a_refusal_without_config_json(pretrained_run, tmp_path):
  """The reviewer's case: config.json missing, a changed batch size refused; the original
  command then runs (here: the finished run is restored) and records its own config."""
  source, original, _ = pretrained_run
  workdir = copy_run(source, tmp_path / "run", config_json=False)
  before = digest(workdir)
  with pytest.raises(ConfigError, match="train.batch_size: saved 64, now 32"):
    main.run(pretrain_config(**{"train.batch_size": 32}), str(workdir))
  main.run(original, str(workdir))
  after = digest(workdir)
  assert after.pop("config.json") and after == before
  assert checkpoints.read_config(str(workdir)).train.batch_size == 64


@pytest.mark.parametrize("config_json", [True, False], ids=["config.json", "no config.json"])
def test_refused_finetuning_resume_leaves_the_workdir_as_it_was(finetuned_run, tmp_path,
                                                                config_json):
  source, original, _ = finetuned_run
  workdir = copy_run(source, tmp_path / "run", config_json)
  before = digest(workdir)
  changed = finetune_config(original.pretrained, batch_size=64)
  with pytest.raises(ConfigError, match="finetune.batch_size: saved 32, now 64"):
    main.run(changed, str(workdir))
  assert digest(workdir) == before
  resume_check.check_workdir(original, str(workdir))


def test_cli_refuses_a_changed_model_by_name_with_exit_code_2(pretrained_run, tmp_path):
  """The checkpoint's architecture differs and config.json is missing: one message naming the
  field, exit code 2, no traceback, and the workdir untouched."""
  source, _, _ = pretrained_run
  workdir = copy_run(source, tmp_path / "run", config_json=False)
  before = digest(workdir)
  process = subprocess.run(
      [sys.executable, "-m", "relic.main", f"--config={QUICKSTART}", f"--workdir={workdir}",
       f"--config.train.num_steps={NUM_STEPS}", "--config.model.base_width=32"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert process.returncode == 2, process.stderr[-3000:]
  assert "model.base_width: saved 16, now 32" in process.stderr
  assert "Traceback" not in process.stderr
  assert digest(workdir) == before
