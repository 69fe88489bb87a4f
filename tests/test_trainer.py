"""The shared loop with a tiny fake task: one step path for every optimizer of every task."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from conftest import make_cfg, read_scalars
from dlexp.build import build
from dlexp.checkpoint import load_checkpoint
from dlexp.cli import config_dir
from dlexp.data import Data, DataMeta, Split
from dlexp.record import Job, Records
from dlexp.run import train
from dlexp.steps import ModuleStep
from dlexp.tasks.base import Task
from dlexp.trainer import Trainer, TrainerSettings


class TwoNets(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)


class TwoStepTask(Task):
    """Steps two optimizers per batch, as a GAN does; `zero` makes the task's own loss 0."""

    def __init__(self, zero: bool = False) -> None:
        self.zero, self.calls = zero, 0

    def parameter_groups(self, model):
        return {"optimizer": list(model.a.parameters()), "optimizer_d": list(model.b.parameters())}

    def _loss(self, net, x, y):
        loss = (net(x) - y).pow(2).mean()
        return loss * 0 if self.zero else loss

    def train_step(self, model, x, y, step):
        self.calls += 1
        la = step("optimizer", lambda: self._loss(model.a, x, y))
        lb = step("optimizer_d", lambda: self._loss(model.b, x, y))
        return la + lb, {"loss": (la + lb) * len(x)}

    def eval_step(self, model, x, y):
        return {"loss": (self._loss(model.a, x, y) + self._loss(model.b, x, y)) * len(x)}, None


def fit(task, tmp_path, *overrides: str, lr: float = 0.1):
    cfg = OmegaConf.merge(
        OmegaConf.load(config_dir() / "trainer" / "default.yaml"),
        OmegaConf.from_dotlist(["progress=none", "checkpoint=false", *overrides]),
    )
    cfg = TrainerSettings.of(cfg)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=gen), torch.randn(40, 1, generator=gen)
    split = Split(x, y)
    data = Data(
        split, Split(x[:8], y[:8]), Split(x[:8], y[:8]), DataMeta("fake", "tabular", (4,), 0)
    )
    torch.manual_seed(0)
    model = TwoNets()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizers = {
        key: torch.optim.SGD(params, lr=lr) for key, params in task.parameter_groups(model).items()
    }
    step = ModuleStep(task, model, data, optimizers, None, "epoch", cfg, torch.device("cpu"), 0)
    job = Job(tmp_path, "run", OmegaConf.create({}), data.meta, {})
    records = Records([job], "train/loss", cfg)
    metrics = Trainer(cfg, step, records, task).fit(8, 64)[0]
    return metrics, start, model.state_dict()


def test_every_optimizer_gets_the_l1_term_on_weights_only(tmp_path):
    # The task's loss is 0, so one SGD step (lr 0.1) moves each weight by exactly
    # lr * l1 * sign / n, n the weights that optimizer updates (l1 x their mean |w|).
    _, start, end = fit(
        TwoStepTask(zero=True), tmp_path, "l1=0.5", "epochs=1", "max_steps_per_epoch=1"
    )
    for net in ("a", "b"):
        n = start[f"{net}.weight"].numel()
        expected = start[f"{net}.weight"] - 0.1 * 0.5 * start[f"{net}.weight"].sign() / n
        assert torch.allclose(end[f"{net}.weight"], expected)
        assert torch.equal(end[f"{net}.bias"], start[f"{net}.bias"])  # no L1 on biases


def test_every_optimizer_is_clipped_and_steps_are_counted(tmp_path):
    norms = []

    def hook(optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    task = TwoStepTask()
    handle = register_optimizer_step_post_hook(hook)
    try:
        metrics, _, _ = fit(task, tmp_path, "grad_clip=0.001", "epochs=3", "max_steps_per_epoch=2")
    finally:
        handle.remove()
    assert task.calls == metrics["steps"] == 6  # 40 samples / 8 = 5 steps, capped at 2, x3
    assert len(norms) == 12 and max(norms) <= 0.001 * 1.0001


def test_one_cycle_is_sized_from_the_real_step_count(env, tmp_path):
    lrs = []
    handle = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"])
    )
    cfg = make_cfg("scheduler=onecycle", "trainer.max_steps_per_epoch=2", "trainer.epochs=3")
    try:
        metrics = train(cfg, run_dir=tmp_path)
    finally:
        handle.remove()
    assert len(lrs) == 6
    assert max(lrs) == pytest.approx(cfg.optimizer.lr, rel=0.05)  # it reaches its peak ...
    assert metrics["lr"] < 1e-5  # ... and anneals by the end
    assert read_scalars(tmp_path)["lr"][-1][1] < 1e-5


@pytest.mark.parametrize(
    ("native", "precision", "expected"),
    [(True, "fast", torch.bfloat16), (False, "fast", torch.float32), (True, "auto", torch.float32)],
)
def test_precision_fast_uses_bf16_where_the_cpu_has_it_and_says_so(
    native, precision, expected, env, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr("dlexp.device.cpu_has_native_bf16", lambda: native)
    dtypes = set()

    def hook(module, args, output) -> None:
        if torch.is_grad_enabled() and isinstance(module, nn.Conv2d):  # training steps
            dtypes.add(output.dtype)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        with caplog.at_level("INFO", logger="dlexp"):
            train(
                make_cfg(
                    "model=cnn",
                    "data=mnist",
                    "trainer.epochs=1",
                    "device=cpu",
                    f"trainer.precision={precision}",
                ),
                run_dir=tmp_path,
            )
    finally:
        handle.remove()
    assert dtypes == {expected}
    chosen = "bf16 autocast" if expected == torch.bfloat16 else "fp32"
    assert f"precision {precision}: {chosen} (cpu" in caplog.text
    if precision == "auto" and native:  # auto keeps the course's fp32 and says what would help
        assert "trainer.precision=fast uses it" in caplog.text


def test_l1_adds_the_course_term_l1_times_the_mean_absolute_weight(env, tmp_path):
    # One SGD step (lr 1) from the same start with and without L1: the weights differ by
    # l1 x sign(w) / (number of weights), the biases not at all (DUDL_regular_L1regu).
    args = ["optimizer=sgd", "optimizer.lr=1", "trainer.epochs=1", "trainer.max_steps_per_epoch=1"]
    plain = train(make_cfg(*args), run_dir=tmp_path / "plain")
    penalised = train(make_cfg(*args, "trainer.l1=0.5"), run_dir=tmp_path / "l1")
    a = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "l1" / "checkpoints" / "last.pt")["model"]
    start = build(make_cfg(*args), torch.device("cpu"))[2].state_dict()  # the runs' start
    n = sum(v.numel() for k, v in a.items() if k.endswith("weight"))
    assert plain["steps"] == penalised["steps"] == 1 and n == 4 * 64 + 64 * 64 + 64 * 3
    for k in a:
        expected = -0.5 * start[k].sign() / n if k.endswith("weight") else torch.zeros_like(a[k])
        torch.testing.assert_close(b[k] - a[k], expected, atol=1e-6, rtol=0)
