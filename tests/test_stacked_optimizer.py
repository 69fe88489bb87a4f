"""The stacked optimizer (dlexp.stacked) held to torch.optim: the same steps on the same
gradients, each job with its own hyperparameters; its per-job state_dict equal to torch's; a
state_dict round trip (torch's state loaded, training goes on as torch's does). And the
param_groups dlexp derives without building an optimizer (dlexp.build.param_group) equal
torch's own."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from dlexp.build import param_group
from dlexp.stacked import StackedOptimizer

SHAPES = {"w": (4, 3), "b": (4,)}
CASES = {  # each job's settings (lr always differs per job)
    "sgd": (torch.optim.SGD, [{}, {}, {}]),
    "sgd-momentum-decay": (
        torch.optim.SGD,
        [{"momentum": 0.9}, {"momentum": 0.5, "weight_decay": 0.01}, {"momentum": 0.0}],
    ),
    "sgd-nesterov": (
        torch.optim.SGD,
        [{"momentum": 0.9, "nesterov": True}, {"momentum": 0.5, "nesterov": True}] * 1,
    ),
    "adam": (
        torch.optim.Adam,
        [{"betas": (0.9, 0.999)}, {"betas": (0.8, 0.99), "eps": 1e-6}, {"weight_decay": 0.1}],
    ),
    "adamw": (torch.optim.AdamW, [{"weight_decay": 0.01}, {"weight_decay": 0.1}, {}]),
    "rmsprop-momentum": (
        torch.optim.RMSprop,
        [{"momentum": 0.9}, {"momentum": 0.0, "alpha": 0.9}, {"weight_decay": 0.01}],
    ),
}


def torch_optimizers(kind, settings, start):
    """One torch optimizer per job, on its own copy of the start weights."""
    params = [
        {k: v[j].clone().requires_grad_() for k, v in start.items()} for j in range(len(settings))
    ]
    opts = [
        kind(list(p.values()), lr=0.01 * (j + 1), **s)
        for j, (p, s) in enumerate(zip(params, settings, strict=True))
    ]
    return params, opts


def stacked(kind, opts, start):
    params = {k: v.clone().requires_grad_() for k, v in start.items()}
    groups = [o.state_dict()["param_groups"][0] for o in opts]
    return params, StackedOptimizer(kind, groups, params)


def step_both(params, opts, stacked_params, optimizer, grads):
    for j, (p, o) in enumerate(zip(params, opts, strict=True)):
        for k, t in p.items():
            t.grad = grads[k][j].clone()
        o.step()
    for k, t in stacked_params.items():
        t.grad = grads[k].clone()
    optimizer.step()


def assert_same(params, stacked_params, opts, optimizer) -> None:
    for j, (p, o) in enumerate(zip(params, opts, strict=True)):
        for k, t in p.items():
            torch.testing.assert_close(stacked_params[k][j], t.detach(), rtol=1e-5, atol=1e-7)
        ours, theirs = optimizer.job_state(j), o.state_dict()
        assert ours["param_groups"] == theirs["param_groups"]
        assert ours["state"].keys() == theirs["state"].keys()
        for i, entry in theirs["state"].items():
            assert ours["state"][i].keys() == entry.keys()
            for name, value in entry.items():
                torch.testing.assert_close(ours["state"][i][name], value, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", CASES)
def test_stacked_optimizer_equals_torch_optim_and_round_trips(case):
    kind, settings = CASES[case]
    n = len(settings)
    gen = torch.Generator().manual_seed(0)
    start = {k: torch.randn(n, *shape, generator=gen) for k, shape in SHAPES.items()}
    grads = [
        {k: torch.randn(n, *shape, generator=gen) for k, shape in SHAPES.items()} for _ in range(20)
    ]
    params, opts = torch_optimizers(kind, settings, start)
    ours, optimizer = stacked(kind, opts, start)
    assert_same(params, ours, opts, optimizer)  # before any step: no state, as torch
    for g in grads[:10]:
        step_both(params, opts, ours, optimizer, g)
    assert_same(params, ours, opts, optimizer)
    # Round trip: a fresh stacked optimizer loads each job's torch state and goes on.
    again = {k: v.detach().clone().requires_grad_() for k, v in ours.items()}
    loaded = StackedOptimizer(kind, optimizer.groups, again)
    for j, o in enumerate(opts):
        loaded.load_job_state(j, o.state_dict())
    for g in grads[10:]:
        step_both(params, opts, again, loaded, g)
    assert_same(params, again, opts, loaded)


@pytest.mark.parametrize(
    "config",
    [
        {
            "_target_": "torch.optim.SGD",
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": True,
            "fused": None,
        },
        {"_target_": "torch.optim.Adam", "lr": 0.001, "betas": [0.5, 0.999], "fused": None},
        {"_target_": "torch.optim.AdamW", "lr": 0.001, "weight_decay": 0.01, "fused": None},
        {"_target_": "torch.optim.RMSprop", "lr": 0.001, "alpha": 0.9, "momentum": 0.5},
    ],
    ids=lambda c: c["_target_"].rsplit(".", 1)[1],
)
def test_param_groups_derived_without_an_optimizer_equal_torchs(config):
    from dlexp.build import build_optimizer

    cfg = OmegaConf.create(config)
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    real = build_optimizer(cfg, params, torch.device("cpu")).state_dict()["param_groups"][0]
    assert param_group(cfg, 2, torch.device("cpu")) == real
