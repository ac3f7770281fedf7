"""CUDA checks (marked ``cuda``, skipped without a GPU): run by ``benchmarks/gpu_check.sh``.

Compiled GAAF on CUDA against the eager reference, bf16 autocast, and a 2-GPU DDP fit with the
GAAFCallback when two GPUs exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from lightning_gaaf import GAAF, apply_gaaf
from lightning_gaaf.activations import use_backend

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 10))
    apply_gaaf(model)
    return model.cuda()


@pytest.mark.parametrize("backend", ["compile", "eager", "auto"])
def test_gaaf_on_cuda_matches_the_cpu_reference(backend):
    model = _mlp()
    x = torch.randn(256, 64, device="cuda")
    with use_backend(backend):
        y = model(x)
        y.square().mean().backward()
    grads = [p.grad.cpu() for p in model.parameters()]
    cpu = model.cpu()
    cpu.zero_grad()
    with use_backend("eager"):
        ref = cpu(x.cpu())
        ref.square().mean().backward()
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-4, atol=1e-5)
    for g, p in zip(grads, cpu.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-3, atol=1e-5)


def test_torch_compile_of_a_gaaf_model_on_cuda_has_no_graph_breaks():
    torch._dynamo.reset()
    model = _mlp()
    x = torch.randn(256, 64, device="cuda")
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_on_cuda_keeps_gradients_finite():
    model = _mlp()
    x = torch.randn(256, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
        assert out.dtype == torch.bfloat16
        loss = out.float().square().mean()
    loss.backward()
    for p in model.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert all(isinstance(m, GAAF) for m in (model[1], model[3]))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpu_ddp_fit_with_the_gaaf_callback(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import pytorch_lightning as pl
            import torch
            from torch import nn
            from torch.utils.data import DataLoader, TensorDataset
            from lightning_gaaf import GAAF, GAAFCallback

            class Net(pl.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.net = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 4))
                def training_step(self, batch, _):
                    x, y = batch
                    return nn.functional.cross_entropy(self.net(x), y)
                def configure_optimizers(self):
                    return torch.optim.SGD(self.parameters(), lr=0.1)

            torch.manual_seed(0)
            data = TensorDataset(torch.randn(512, 32), torch.randint(0, 4, (512,)))
            model = Net()
            trainer = pl.Trainer(accelerator="gpu", devices=2, strategy="ddp", max_epochs=1,
                                 logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 callbacks=[GAAFCallback()])
            trainer.fit(model, DataLoader(data, batch_size=32))
            assert isinstance(model.net[1], GAAF)
            if trainer.global_rank == 0:
                print("DDP-OK", trainer.world_size)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=400, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "DDP-OK 2" in out.stdout
