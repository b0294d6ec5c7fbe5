"""NaN and exploding weights: a checkpoint is good only if finite and bounded, and a re-run after a
divergence does not resume silently into the state that diverged (components/training/checkpoint.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from components.training import checkpoint
from components.training.recipe import TrainingDivergedError, train
from tests.components.training.test_train import behavior, data_file  # noqa: F401 - the module's tiny data set
from tests.conftest import make_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


class PoisonAfterStep:
    """After optimizer step `at`, multiply every trainable weight by 1e37: the state a diverging run
    left in its "last good" checkpoint. The step's own loss was finite, so the checkpoint is written."""

    def __init__(self, at: int):
        self.at, self.steps = at, 0

    def __call__(self, optimizer, args, kwargs):
        self.steps += 1
        if self.steps == self.at:
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.mul_(1e37)

    def __enter__(self):
        self.handle = register_optimizer_step_post_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_exploded_checkpoint_is_not_last_good_and_rerun_does_not_resume_into_it(tmp_path, tokenizer, data_file, capsys):  # noqa: F811
    spec = behavior(data_file)  # 6 steps, a checkpoint every 2, lr 0.01
    with PoisonAfterStep(4), pytest.raises(TrainingDivergedError) as info:
        train(make_tiny_llama(tokenizer), tokenizer, spec, tmp_path)
    ckpts = tmp_path / "checkpoints"
    message = str(info.value)
    assert message.startswith("step 5: ") and f"kept the last good checkpoint {ckpts / 'step-000002'}." in message
    assert "Lower training.lr from 0.01 to 0.0025" in message
    poisoned = json.loads((ckpts / "step-000004" / checkpoint.COMPLETE).read_text())["health"]
    assert poisoned["finite"] and poisoned["max_abs"] > 1e35  # written, and recorded as exploded
    assert "its weights reach" in checkpoint.checkpoint_problem(ckpts / "step-000004")
    assert checkpoint.latest_checkpoint(ckpts).name == "step-000002"
    assert f"skipping checkpoint {ckpts / 'step-000004'}: its weights reach" in capsys.readouterr().out

    with pytest.raises(TrainingDivergedError) as again:  # the same spec again: refused, not resumed
        train(make_tiny_llama(tokenizer), tokenizer, spec, tmp_path)
    assert str(again.value) == (
        f"this training stage diverged before (step 5: {message.split(': ', 1)[1].split(';')[0]}, lr 0.01); running "
        f"the unchanged spec again would resume from {ckpts / 'step-000002'} and diverge the same way. Lower "
        f"training.lr, e.g. to 0.0025 (a changed spec trains afresh), or to retry anyway delete {ckpts / 'diverged.json'}"
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["diverged.json", "step-000002", "step-000004"]

    (ckpts / checkpoint.DIVERGED).unlink()  # the user's explicit choice: retry from the last good state
    record = train(make_tiny_llama(tokenizer), tokenizer, spec, tmp_path)
    assert record.resumed_from_step == 2 and record.steps == 6


def test_non_finite_weights_or_loss_are_never_resumed_from(tmp_path):
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    def save(step, value, loss):
        with torch.no_grad():
            weight.fill_(value)
        state = {"step": step, "loss_curve": [[step, loss]]}
        return checkpoint.save_checkpoint(tmp_path, step, params={"w": weight}, optimizer=optimizer,
                                          scheduler=scheduler, trainer_state=state, keep=1)

    save(1, 1.0, 0.5)
    save(2, float("inf"), 0.4)
    save(3, 1.0, float("nan"))
    save(4, 2e4, 0.3)
    # keep=1 prunes good checkpoints only: the one good state survives three bad ones
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == [f"step-00000{i}" for i in (1, 2, 3, 4)]
    assert checkpoint.checkpoint_problem(tmp_path / "step-000002") == "its weights hold NaN or inf"
    assert checkpoint.checkpoint_problem(tmp_path / "step-000003") == "its step's loss was nan"
    assert checkpoint.checkpoint_problem(tmp_path / "step-000004") == (
        "its weights reach 2e+04 (bound 10000): the run was diverging")
    assert checkpoint.latest_checkpoint(tmp_path, log=lambda _m: None).name == "step-000001"
    marker = tmp_path / "step-000004" / checkpoint.COMPLETE  # a checkpoint written before health was recorded
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "health"}))
    assert "its weights reach" in checkpoint.checkpoint_problem(tmp_path / "step-000004")
