"""VPT-deep against a hand-written reference: each block run on [prefix, prompts, patches], prompt rows dropped."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_encoder
from timm.layers import LayerScale
from torch import nn

import medpeft.adapters.vpt  # noqa: F401  (registers the method)
from medpeft.adapters import (
    adapter_modules,
    adapter_parameters,
    get_adapter_method,
    inject_adapters,
    load_adapter,
    match_budget,
    merge_adapters,
    save_adapter,
)
from medpeft.adapters.vpt import VPTBlock, VPTConfig
from medpeft.models import build_segmenter

PREFIX_TOKENS = {"vit": 1, "dinov2": 5}  # class token; class token + 4 registers


def _encoder(family: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """``make_encoder`` with DINOv2's layer scales at 1: timm drops conftest's ``init_values=None`` (None kwargs are
    left out), and at 1e-5 the blocks barely change their input, which would hide what the prompts do."""
    model, x = make_encoder(family, seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LayerScale):
                module.gamma.fill_(1.0)
    return model, x


def _injected(family: str = "vit", prompts: int = 3, seed: int = 0, **options):
    model, x = _encoder(family, seed)
    names = inject_adapters(model, "vpt", ["blocks"], prompts=prompts, **options)
    return model, x, names


def _with_prompts(block: nn.Module, tokens: torch.Tensor, prompts: torch.Tensor, n: int) -> torch.Tensor:
    """``block([prefix, P, patches])`` without the ``P`` rows, written out by hand."""
    batch, p = tokens.shape[0], prompts.shape[0]
    out = block(torch.cat([tokens[:, :n], prompts[None].repeat(batch, 1, 1), tokens[:, n:]], dim=1))
    keep = [i for i in range(out.shape[1]) if not n <= i < n + p]
    return out[:, keep]


def test_registry_facts_and_option_checks():
    method = get_adapter_method("vpt")
    assert method.size_knob == "prompts" and method.default_targets == ("blocks",)
    assert method.merge_refusal == "prompts are extra tokens, not weights"
    for bad in ({"prompts": 0}, {"prompts": 2.0}, {"dropout": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            VPTConfig(**bad)


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_block_matches_hand_written_reference(family):
    plain, _ = _encoder(family)
    model, _, names = _injected(family, prompts=4)
    n = PREFIX_TOKENS[family]
    assert plain.num_prefix_tokens == n and names == sorted(f"blocks.{i}" for i in range(len(plain.blocks)))
    dim = plain.embed_dim
    tokens = torch.randn(2, n + 6, dim, generator=torch.Generator().manual_seed(3))
    for original, wrapped in zip(plain.blocks, model.blocks):
        assert isinstance(wrapped, VPTBlock) and wrapped.prefix_tokens == n and wrapped.vpt_prompt.shape == (4, dim)
        with torch.no_grad():
            out = wrapped(tokens)
            assert out.shape == tokens.shape
            torch.testing.assert_close(out, _with_prompts(original, tokens, wrapped.vpt_prompt, n))
            # the prompts matter: the same block without them gives other outputs at the kept tokens
            assert (out - original(tokens)).abs().max() > 0.05 * (original(tokens) - tokens).abs().max()


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_whole_model_and_forward_intermediates_match_a_manual_loop(family):
    plain, x = _encoder(family)
    model, _, _ = _injected(family, prompts=2)
    n, depth = PREFIX_TOKENS[family], len(plain.blocks)
    with torch.no_grad():
        tokens = plain.norm_pre(plain.patch_drop(plain._pos_embed(plain.patch_embed(x))))
        per_block = []
        for original, wrapped in zip(plain.blocks, model.blocks):
            tokens = _with_prompts(original, tokens, wrapped.vpt_prompt, n)
            per_block.append(tokens)
        logits = plain.forward_head(plain.norm(tokens))
        torch.testing.assert_close(model(x), logits)
        # what medpeft's encoder reads (families.base.EncoderFamily.features): patch tokens of chosen blocks
        maps = model.forward_intermediates(x, indices=[0, depth - 1], output_fmt="NLC", intermediates_only=True)
        for got, expected in zip(maps, [per_block[0], per_block[-1]]):
            torch.testing.assert_close(got, expected[:, n:])
        # not the base model at initialisation: prompts attend from the start (see the module docstring)
        assert (model(x) - plain(x)).abs().max() > 0.01 * plain(x).abs().max()


def test_segmenter_runs_with_vpt_in_its_encoder():
    torch.manual_seed(0)
    net = build_segmenter(
        encoder="vit_tiny_patch16_224", pretrained=False, decoder="unetr", in_channels=1, num_classes=2, img_size=32
    )
    names = inject_adapters(net.encoder, "vpt", ["blocks"], prompts=5)
    assert names == sorted(f"model.blocks.{i}" for i in range(12))
    encoder_trainable = [p for p in net.encoder.parameters() if p.requires_grad]
    assert sum(p.numel() for p in encoder_trainable) == 12 * 5 * 192
    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    logits = net(image)
    assert logits.shape == (2, 2, 32, 32)
    logits.square().mean().backward()
    for parameter in adapter_parameters(net.encoder):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in net.encoder.named_parameters() if "base_layer" in name)


def test_merge_is_refused_with_the_reason():
    model, _, _ = _injected()
    with pytest.raises(ValueError, match="vpt cannot be merged into the plain network: prompts are extra tokens"):
        merge_adapters(model)


def test_adapter_file_round_trip_is_exact(tmp_path):
    model, x, _ = _injected("dinov2", seed=0)
    save_adapter(model, tmp_path / "vpt.safetensors")
    fresh, _ = _encoder("dinov2", seed=0)
    torch.manual_seed(123)  # other prompts
    inject_adapters(fresh, "vpt", ["blocks"], prompts=3)
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "vpt.safetensors")
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("prompts, blocks", [(3, None), (7, [0, -1])])
def test_trainable_count_is_p_D_per_block(prompts, blocks):
    model, _ = make_encoder("vit")
    dim, depth = model.embed_dim, len(model.blocks)
    names = inject_adapters(model, "vpt", ["blocks"], blocks=blocks, prompts=prompts)
    adapted = depth if blocks is None else len(blocks)
    assert len(names) == adapted
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(model)}
    assert sum(p.numel() for p in trainable) == prompts * dim * adapted


def test_budget_chooses_the_prompt_count_by_the_formula():
    model, _ = make_encoder("vit")
    found = match_budget(model, "vpt", ["blocks"], budget=12 * 192 * 7 + 100)
    assert (found.knob, found.value, found.params) == ("prompts", 7, 12 * 192 * 7)


def test_gradients_reach_every_prompt_and_no_base_weight():
    model, x, _ = _injected("dinov2")
    model(x).square().sum().backward()
    prompts = adapter_parameters(model)
    assert len(prompts) == 2
    for parameter in prompts:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in model.named_parameters() if "base_layer" in name)


def test_prompt_init_is_the_patch_embedding_xavier_bound():
    model, _, _ = _injected(prompts=50)
    bound = math.sqrt(6 / (3 * 16 * 16 + 192))  # C k_h k_w of the patch embedding + D
    for block in adapter_modules(model).values():
        prompt = block.vpt_prompt
        assert prompt.abs().max() <= bound and prompt.abs().max() > 0.9 * bound
        assert abs(prompt.std().item() - bound / math.sqrt(3)) < 0.1 * bound  # uniform(-v, v) has std v / sqrt(3)


def test_non_vit_blocks_and_missing_prefix_count_are_refused():
    swin, _ = make_encoder("swin")
    with pytest.raises(ValueError, match=r"'layers.0.blocks.0', a timm.models.swin_transformer.SwinTransformerBlock"):
        inject_adapters(swin, "vpt", ["blocks"], prompts=2)
    vit, _ = make_encoder("vit")
    holder = nn.Module()  # ViT blocks, but nothing above them says how many prefix tokens lead the sequence
    holder.blocks = copy.deepcopy(vit.blocks)
    with pytest.raises(ValueError, match=r"no module above 'blocks.0' has timm's num_prefix_tokens"):
        inject_adapters(holder, "vpt", ["blocks"], prompts=2)
    assert not adapter_modules(holder) and all(p.requires_grad for p in holder.parameters())  # unchanged


def test_attention_masks_and_wrong_shapes_are_refused():
    model, _, _ = _injected()
    tokens = torch.randn(2, 5, 192)
    with pytest.raises(ValueError, match="attention masks"):
        model.blocks[0](tokens, attn_mask=torch.zeros(2, 1, 5, 5))
    with pytest.raises(ValueError, match=r"tokens \[B, N, 192\]"):
        model.blocks[0](torch.randn(2, 2, 2, 192))
