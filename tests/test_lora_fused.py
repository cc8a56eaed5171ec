"""trainer.lora_fused: the one-node LoRA linear gives peft's outputs and gradients, and hands every case
it does not handle back to peft's own forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.lora_fused import _LoraLinear, fuse, fused_forward

peft = pytest.importorskip("peft")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(24, 40)
        self.down = nn.Linear(40, 24, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _model(dropout: float, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    m = peft.get_peft_model(Block(), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                     target_modules=["up", "down"], **kw))  # fmt: skip
    with torch.no_grad():  # B starts at zero: make the adapter's path count
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return m


def _run(
    m: nn.Module, x: torch.Tensor, seed: int = 3
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout masks both ways
    y = m(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("frozen", [True, False])
def test_outputs_and_gradients_equal_peft(dropout: float, frozen: bool) -> None:
    x = torch.randn(3, 7, 24)
    ref, fused = _model(dropout), _model(dropout)
    for m in (ref, fused):
        for n, p in m.named_parameters():
            p.requires_grad_(not frozen or "lora_" in n)
    assert fuse(fused) == 2
    y0, gx0, g0 = _run(ref, x)
    y1, gx1, g1 = _run(fused, x)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) == (4 if frozen else 7)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-6)


def test_the_fused_path_is_taken_in_the_plain_case(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = _LoraLinear.apply
    monkeypatch.setattr(_LoraLinear, "apply", lambda *a: calls.append(1) or real(*a))
    m = _model(0.0)
    fuse(m)
    m(torch.randn(2, 24))
    assert len(calls) == 2


@pytest.mark.parametrize("case", ["merged", "disabled", "dora", "dtype", "autocast"])
def test_other_cases_go_through_peft(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_LoraLinear, "apply", lambda *a: pytest.fail("the fused path was taken"))
    m = _model(0.0, use_dora=case == "dora")
    ref = _model(0.0, use_dora=case == "dora")
    fuse(m)
    x = torch.randn(2, 24)
    if case == "merged":
        m.merge_adapter()
        ref.merge_adapter()
    if case == "dtype":  # an fp32 adapter on a float64 base: peft casts, the fused path would not
        x = x.double()
        m, ref = m.double(), ref.double()
        for layer in (m.base_model.model.up, ref.base_model.model.up):
            layer.lora_A["default"].float()
            layer.lora_B["default"].float()
        torch.testing.assert_close(m.base_model.model.up(x), ref.base_model.model.up(x))
        return
    if case == "disabled":
        with m.disable_adapter(), ref.disable_adapter():
            torch.testing.assert_close(m(x), ref(x))
        return
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(m(x), ref(x))
        return
    torch.testing.assert_close(m(x), ref(x))


def test_fused_forward_with_extra_arguments_is_peft(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model(0.0)
    layer = m.base_model.model.up
    seen = []
    monkeypatch.setattr(type(layer), "forward", lambda self, x, *a, **kw: seen.append(kw) or x)
    fused_forward(layer, torch.randn(2, 24), adapter_names=["default", "default"])
    assert seen == [{"adapter_names": ["default", "default"]}]
