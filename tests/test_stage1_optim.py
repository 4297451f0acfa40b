"""Stage-1 optimisers and schedules: every registry key builds and steps; SAM, Muon and the
schedules do what they claim."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stage1_nn.config import OptimConfig
from stage1_nn.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler


class TinyNet(nn.Module):
    """A 'backbone' conv and a head, so every parameter group (backbone/head, decay/no decay)
    and every tensor rank (4-D conv, 2-D linear, 1-D bias) is present."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.backbone(x))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randn(8, 2, generator=g)


def _loss_and_gradients(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = (model(x) - y).abs().mean()
    loss.backward()
    return loss


def _steps(model, optimizer, scheduler, x, y, n):
    """`n` training steps on one batch (with the closure SAM needs), the schedule stepped too."""
    for _ in range(n):
        _loss_and_gradients(model, optimizer, x, y)
        if getattr(optimizer, "needs_closure", False):
            optimizer.step(lambda: _loss_and_gradients(model, optimizer, x, y))
        else:
            optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("key", OPTIMIZERS.keys())
def test_every_optimiser_key_steps_and_lowers_the_loss(key):
    model, (x, y) = TinyNet(), _batch()
    cfg = OptimConfig(name=key, lr=1e-2, backbone_lr=1e-2, weight_decay=0.0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, 30, 0, cfg)
    first = float(_loss_and_gradients(model, optimizer, x, y).detach())
    _steps(model, optimizer, scheduler, x, y, 30)
    assert float((model(x) - y).abs().mean().detach()) < first
    assert {g["name"] for g in optimizer.param_groups} == {"backbone", "head"}


@pytest.mark.parametrize("key", [*OPTIMIZERS.keys(), "sam-muon"])
def test_every_optimiser_key_resumes_from_its_state_dict_as_if_never_stopped(key, tmp_path):
    """A killed stage-1 fold resumes from saved optimiser and schedule states (`stage1_nn.resume`):
    three steps, a save and a load into fresh objects, three more steps land on the same weights
    and learning rates as six unbroken steps (SAM over Muon: a wrapper around a chain)."""
    name, _, base = key.partition("-")
    cfg = OptimConfig(name=name, lr=1e-2, backbone_lr=5e-3, weight_decay=0.01, warmup_epochs=0,
                      **({"sam": {"base": base}} if base else {}))
    (x, y), built = _batch(), []
    for _ in range(2):
        model = TinyNet()
        optimizer = build_optimizer(model, cfg)
        built.append((model, optimizer, build_scheduler(optimizer, 6, 2, cfg)))
    (unbroken, opt_a, sched_a), (resumed, opt_b, sched_b) = built
    _steps(unbroken, opt_a, sched_a, x, y, 3)
    torch.save({"model": unbroken.state_dict(), "optimizer": opt_a.state_dict(),
                "scheduler": sched_a.state_dict()}, tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["optimizer"])
    sched_b.load_state_dict(saved["scheduler"])
    _steps(unbroken, opt_a, sched_a, x, y, 3)
    _steps(resumed, opt_b, sched_b, x, y, 3)
    for a, b in zip(unbroken.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]


def test_unknown_optimiser_and_schedule_keys_name_the_valid_ones():
    with pytest.raises(KeyError, match="unknown stage-1 optimiser 'lion'.*adamw.*muon.*sam.*sgd"):
        build_optimizer(TinyNet(), OptimConfig(name="lion"))
    optimizer = build_optimizer(TinyNet(), OptimConfig())
    with pytest.raises(KeyError, match="unknown stage-1 lr schedule 'step'.*cosine.*hold"):
        build_scheduler(optimizer, 10, 0, OptimConfig(schedule="step"))


def test_adamw_takes_betas_and_eps_from_config():
    optimizer = build_optimizer(TinyNet(), OptimConfig(betas=(0.8, 0.95), eps=1e-6))
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.95) and optimizer.param_groups[0]["eps"] == 1e-6


def test_sam_steps_with_the_gradient_at_the_perturbed_weights():
    # f(w) = sum(w^4) / 4, grad w^3. Plain SGD (no momentum) under SAM must move by
    # -lr * grad(w + rho * g / |g|), not by -lr * grad(w).
    w0 = torch.tensor([1.0, 2.0])
    model = nn.Module()
    model.w = nn.Parameter(w0.clone())
    rho, lr = 0.1, 0.01
    cfg = OptimConfig(name="sam", lr=lr, backbone_lr=lr, weight_decay=0.0, momentum=0.0,
                      sam={"base": "sgd", "rho": rho})
    optimizer = build_optimizer(model, cfg)

    def loss_and_gradients():
        optimizer.zero_grad(set_to_none=True)
        loss = (model.w ** 4).sum() / 4
        loss.backward()
        return loss

    loss_and_gradients()
    optimizer.step(loss_and_gradients)
    g = w0 ** 3
    w_adv = w0 + rho * g / g.norm()
    torch.testing.assert_close(model.w.detach(), w0 - lr * w_adv ** 3)
    assert not torch.allclose(model.w.detach(), w0 - lr * g)
    with pytest.raises(RuntimeError, match="closure"):
        optimizer.step()


def test_muon_takes_the_matrices_and_adamw_the_rest():
    if not hasattr(torch.optim, "Muon"):
        with pytest.raises(RuntimeError, match="torch >= 2.9"):
            build_optimizer(TinyNet(), OptimConfig(name="muon"))
        return
    model = TinyNet()
    optimizer = build_optimizer(model, OptimConfig(name="muon"))
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert in_muon == {id(model.head.weight)}  # the only 2-D tensor
    assert in_muon.isdisjoint(in_adamw)
    assert in_muon | in_adamw == {id(p) for p in model.parameters()}
    # the schedule reaches both: one param_groups list over the two optimisers
    scheduler = build_scheduler(optimizer, 10, 5, OptimConfig(name="muon"))
    optimizer.step()  # no gradients yet: a no-op, but the order torch expects
    scheduler.step()
    assert muon.param_groups[0]["lr"] == pytest.approx(muon.param_groups[0]["initial_lr"] * 2 / 5)


def _factors(schedule: str, total: int = 100, warmup: int = 10, **kw) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = OptimConfig(schedule=schedule, min_lr_ratio=0.1, **kw)
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    scheduler = build_scheduler(optimizer, total, warmup, cfg)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("key", SCHEDULES.keys())
def test_every_schedule_warms_up_linearly_and_ends_near_min_lr(key):
    lr = _factors(key)
    assert lr[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lr[10] == pytest.approx(1.0)
    assert 0.1 <= lr[-1] < 0.15


def test_hold_schedule_holds_then_cools_down_linearly():
    lr = _factors("hold", cooldown_fraction=0.2)
    assert lr[10:80] == pytest.approx([1.0] * 70)  # held at the peak
    assert lr[80:] == pytest.approx([1.0 - 0.9 * i / 20 for i in range(20)])  # linear cool-down
    cosine = _factors("cosine")
    assert cosine[50] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 40 / 90)))


def _reference_orthogonalisation(update: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz, written out in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = update.double().T  # (out, in) with out > in: torch iterates on the wide side
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T


def _one_muon_step(optimizer_factory, steps: int = 5):
    """Weight change of a 64x16 matrix after one Muon step with momentum 0 and no decay, and the
    float64 reference of that change."""
    torch.manual_seed(3)
    weight = nn.Parameter(torch.randn(64, 16))
    weight.grad = torch.randn(64, 16)
    w0 = weight.detach().clone()
    optimizer_factory([weight]).step()
    lr_scale = 0.2 * math.sqrt(64)  # match_rms_adamw
    return weight.detach() - w0, -0.1 * lr_scale * _reference_orthogonalisation(weight.grad, steps).float()


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_muon_orthogonalises_in_float32_on_cpu_and_its_keys_reach_the_optimiser():
    from stage1_nn.muon import Muon

    kw = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "adjust_lr_fn": "match_rms_adamw"}
    # bfloat16: exactly torch's own step (only the dtype is ours to choose)
    ours_bf16, _ = _one_muon_step(lambda p: Muon(p, ns_dtype="bfloat16", **kw))
    torch_bf16, reference = _one_muon_step(lambda p: torch.optim.Muon(p, **kw))
    assert torch.equal(ours_bf16, torch_bf16)
    # auto on CPU: float32, the reference to float precision; torch's bfloat16 is visibly off
    ours_auto, _ = _one_muon_step(lambda p: Muon(p, **kw))
    assert torch.allclose(ours_auto, reference, atol=1e-5, rtol=1e-4)
    assert (torch_bf16 - reference).abs().max() > 1e-3
    # fewer Newton-Schulz steps: another update, still the reference's for those steps
    ours_two, _ = _one_muon_step(lambda p: Muon(p, ns_steps=2, **kw), steps=2)
    _, reference_two = _one_muon_step(lambda p: Muon(p, ns_steps=2, **kw), steps=2)
    assert torch.allclose(ours_two, reference_two, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours_two, ours_auto, atol=1e-3)
    with pytest.raises(ValueError, match="ns_dtype"):
        Muon([nn.Parameter(torch.zeros(2, 2))], ns_dtype="float16")

    # through the registry: config keys reach the group; the matrix step is float32's
    model = TinyNet()
    cfg = OptimConfig(name="muon", lr=0.1, weight_decay=0.0, momentum=0.0, muon={"ns_steps": 3})
    optimizer = build_optimizer(model, cfg)
    muon = optimizer.optimizers[0]
    assert muon.param_groups[0]["ns_steps"] == 3 and muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    x, y = _batch()
    _loss_and_gradients(model, optimizer, x, y)
    w0, grad = model.head.weight.detach().clone(), model.head.weight.grad.clone()
    optimizer.step()
    # head.weight is 2x4 (wide): torch iterates on it as is; transpose twice for the helper
    expected = -0.1 * 0.2 * math.sqrt(4) * _reference_orthogonalisation(grad.T, 3).T.float()
    assert torch.allclose(model.head.weight.detach() - w0, expected, atol=1e-6, rtol=1e-4)
