"""Tiny ``nn.Module`` s for the traced-groups tests and ``bench/traced_groups.py``.

``builders()`` maps a name to ``() -> (module in eval mode, example input)``: a CNN with BatchNorm,
a residual addition, a depthwise conv and a flatten into a linear layer; ``nn.TransformerEncoder``;
the bundled models exported with ``compact.to_module``; and, when ``transformers`` is installed,
its ResNet, MobileNetV2, ConvNeXt, ViT, BERT, GPT-2, Llama, Qwen2 (grouped-query attention) and
Mixtral (mixture of experts) classes built from small configs (hidden 16-32, 1-2 layers; no
download). ``prune_and_check`` runs the whole path and returns the figures of the table.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pure_prune import compact, interop, mask, select, tree
from pure_prune.importance import magnitude

Builder = Callable[[], tuple[nn.Module, torch.Tensor]]


class SmallCNN(nn.Module):
    """conv-BN-relu, a residual block, a wider conv, a depthwise conv, pooling, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h = h + torch.relu(self.b2(self.c2(h)))
        h = torch.relu(self.b3(self.c3(h)))
        h = nn.functional.adaptive_avg_pool2d(self.dw(h), 2)
        return self.fc(h.flatten(1))


def _randomize_norm_stats(module: nn.Module, key: int) -> nn.Module:
    g = torch.Generator().manual_seed(key)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def _small_cnn():
    torch.manual_seed(0)
    return _randomize_norm_stats(SmallCNN(), 1), torch.randn(2, 3, 8, 8)


def _transformer_encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), torch.randn(2, 5, 16)


def _bundled(name: str, x_shape: tuple[int, ...], **cfg: Any) -> Builder:
    def build():
        from pure_prune import models

        spec = models.get(name)
        params, state = spec.init(0, **{**spec.default_cfg, **cfg})
        module = compact.to_module(spec.apply, params, state).eval()
        return module, torch.randn(*x_shape, generator=torch.Generator().manual_seed(0))

    return build


def _hf(make: Callable[[Any], nn.Module], x: Callable[[], torch.Tensor]) -> Builder:
    def build():
        import transformers

        torch.manual_seed(0)
        module = make(transformers)
        return _randomize_norm_stats(module, 2), x()

    return build


def _ids(vocab: int = 64) -> Callable[[], torch.Tensor]:
    return lambda: torch.randint(0, vocab, (2, 6), generator=torch.Generator().manual_seed(0))


def _image(size: int = 32) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


_ATTN = {"attn_implementation": "sdpa"}
TRANSFORMERS = {
    "hf-resnet": _hf(
        lambda t: t.ResNetForImageClassification(
            t.ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5
            )
        ),
        _image(),
    ),
    "hf-mobilenet_v2": _hf(
        lambda t: t.MobileNetV2ForImageClassification(
            t.MobileNetV2Config(depth_multiplier=0.25, image_size=32, num_labels=5)
        ),
        _image(),
    ),
    "hf-convnext": _hf(
        lambda t: t.ConvNextForImageClassification(
            t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=5)
        ),
        _image(),
    ),
    "hf-vit": _hf(
        lambda t: t.ViTForImageClassification(
            t.ViTConfig(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=24,
                image_size=16,
                patch_size=8,
                num_labels=5,
                **_ATTN,
            )
        ),
        _image(16),
    ),
    "hf-bert": _hf(
        lambda t: t.BertForSequenceClassification(
            t.BertConfig(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=24,
                vocab_size=64,
                max_position_embeddings=16,
                num_labels=3,
                **_ATTN,
            )
        ),
        _ids(),
    ),
    "hf-gpt2": _hf(
        lambda t: t.GPT2LMHeadModel(
            t.GPT2Config(
                n_embd=16,
                n_layer=1,
                n_head=2,
                vocab_size=64,
                n_positions=16,
                bos_token_id=0,
                eos_token_id=0,
                **_ATTN,
            )
        ),
        _ids(),
    ),
    "hf-llama": _hf(
        lambda t: t.LlamaForCausalLM(
            t.LlamaConfig(
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=64,
                **_ATTN,
            )
        ),
        _ids(),
    ),
    "hf-qwen2": _hf(
        lambda t: t.Qwen2ForCausalLM(
            t.Qwen2Config(
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=1,
                vocab_size=64,
                **_ATTN,
            )
        ),
        _ids(),
    ),
    "hf-mixtral": _hf(
        lambda t: t.MixtralForCausalLM(
            t.MixtralConfig(
                hidden_size=32,
                intermediate_size=40,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=64,
                num_local_experts=4,
                num_experts_per_tok=2,
                **_ATTN,
            )
        ),
        _ids(),
    ),
}


def builders() -> dict[str, Builder]:
    """Every tiny module by name (transformers' only when it is installed)."""
    out: dict[str, Builder] = {
        "small_cnn": _small_cnn,
        "nn.TransformerEncoder": _transformer_encoder,
        "zoo-mlp": _bundled("mlp", (4, 64)),
        "zoo-lenet5": _bundled("lenet5", (2, 1, 28, 28)),
        "zoo-vgg11": _bundled("vgg11", (2, 3, 32, 32)),
        "zoo-resnet20": _bundled("resnet20", (2, 3, 32, 32)),
    }
    try:
        import transformers  # noqa: F401
    except ImportError:
        return out
    return {**out, **TRANSFORMERS}


def _logits(out: Any) -> torch.Tensor:
    """The first floating tensor of a forward's output (logits of transformers' ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    for o in out:
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            return o
    raise TypeError(f"no tensor in {type(out).__name__}")


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prune_and_check(module: nn.Module, x: torch.Tensor, groups, sparsity: float = 0.3) -> dict[str, Any]:
    """Remove ``sparsity`` of every prunable group by L1 norm, compact, resize, save and reload.

    Returns ``{"class", "params_before", "params_after", "module_vs_masked", "reload_vs_module",
    "pickled_bytes"}``: the resized module (the compacted trees in the user's class) against the
    masked module, and a state_dict reloaded into a fresh resized module against it; differences
    are max |a - b| / max |masked output|.
    """
    apply, params, state = interop.from_module(module)
    scores = magnitude.magnitude(params, interop.masks_like(module, params))
    masks = select.channels(scores, sparsity, groups)
    masked, _ = apply(mask.apply(params, masks), state, x)
    masked = _logits(masked)
    scale = float(masked.abs().max())
    cp, cs, _, _ = compact.compact(params, state, masks, groups)
    small = interop.to_module(module, cp, cs)
    with torch.no_grad():
        out_small = _logits(small(x))
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    buf.seek(0)
    # a fresh module of the class with the new shapes (non-persistent buffers such as RoPE's
    # inv_freq are not in a state_dict, so the state is passed as it is)
    blank = interop.to_module(module, tree.map(torch.zeros_like, cp), cs)
    blank.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        out_reload = _logits(blank.eval()(x))
    whole = io.BytesIO()
    torch.save(small, whole)
    return {
        "class": type(small).__name__,
        "params_before": count(module),
        "params_after": count(small),
        "module_vs_masked": float((out_small - masked).abs().max()) / scale,
        "reload_vs_module": float((out_reload - out_small).abs().max()) / scale,
        "pickled_bytes": len(whole.getvalue()),
    }
