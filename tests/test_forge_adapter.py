"""The Forge adapter's own logic, on stand-ins for Forge's model objects (the real Forge: test_forge_e2e.py)."""

import types

import pytest
import torch

from lib_smooth.webui.forge import ForgeBackend


class InPlaceUNet(torch.nn.Module):
    """Like Forge's UNet blocks: an activation an operation saved for backward is then updated in place."""

    def __init__(self):
        super().__init__()
        self.proj_in, self.proj_out = torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)
        self.register_buffer("shift", torch.linspace(-1, 1, 8))

    def forward(self, x, timesteps=None, context=None, transformer_options=None, y=None, in_place=True):
        h = torch.sigmoid(self.proj_in(x + context.mean(dim=1, keepdim=True)))  # sigmoid saves its output
        if in_place:
            h += self.shift
        else:
            h = h + self.shift
        return self.proj_out(h)


def forge_backend(unet: torch.nn.Module) -> ForgeBackend:
    """The adapter over a stand-in UnetPatcher, without the Forge state its constructor reads."""
    backend = ForgeBackend.__new__(ForgeBackend)
    kmodel = types.SimpleNamespace(diffusion_model=unet, computation_dtype=torch.float32)
    backend.model = types.SimpleNamespace(forge_objects=types.SimpleNamespace(unet=types.SimpleNamespace(model=kmodel)))
    backend._memory = types.SimpleNamespace(load_model_gpu=lambda patcher: None)
    backend.device = torch.device("cpu")
    return backend


def test_null_text_gradients_pass_through_a_unet_built_for_inference_only():
    torch.manual_seed(0)
    with torch.inference_mode():  # as Forge builds its models: every weight an inference tensor
        built = InPlaceUNet()
    torch.manual_seed(0)
    reference = InPlaceUNet()
    x, t = torch.randn(2, 3, 4), torch.tensor([10, 10])
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        context = torch.randn(2, 5, 4, requires_grad=True)
        built(x, context=context).sum().backward()
    context = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    forge_backend(built).unet(x, t, context).square().sum().backward()  # ordinary weights, saved copies
    expected = context.detach().clone().requires_grad_(True)
    reference(x, context=expected, in_place=False).square().sum().backward()
    assert torch.allclose(context.grad, expected.grad, atol=1e-6) and context.grad.abs().sum() > 0
    assert all(not p.is_inference() for p in built.parameters()) and not built.shift.is_inference()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), reference.state_dict().values()))  # the same weights


def test_sampling_calls_build_no_graph():
    torch.manual_seed(0)
    with torch.inference_mode():
        built = InPlaceUNet()
    out = forge_backend(built).unet(torch.randn(1, 3, 4), torch.tensor([5]), torch.randn(1, 5, 4))
    assert not out.requires_grad and all(p.is_inference() for p in built.parameters())  # left as Forge made them
