"""The model: exact parameter counts, attention paths agree, numerics against an independent float64 forward."""

import math

import pytest
import torch
import torch.nn.functional as F

from vitkit.config import LISTED, SIZES, ViTConfig, parse_variant, variant_config
from vitkit.model import ViT, create_model, sincos_2d

# As the official code reports them (vit_jax models_test.py), 1000 classes at 224 px.
OFFICIAL_PARAMS = {
    "Ti/16": 5_717_416, "S/16": 22_050_664, "S/32": 22_878_952, "B/16": 86_567_656, "B/32": 88_224_232,
    "B/8": 86_576_872, "L/16": 304_326_632, "L/32": 306_535_400, "H/14": 632_045_800,
}


@pytest.mark.parametrize("name,count", OFFICIAL_PARAMS.items())
def test_parameter_counts_match_official(name, count):
    with torch.device("meta"):
        model = create_model(f"ViT-{name}", num_classes=1000, image_size=224)
    assert model.num_params() == count


def test_every_paper_variant_has_a_pinned_count():
    paper = {v for v in LISTED if parse_variant(v)[0] in ("Ti", "S", "B", "L", "H") and parse_variant(v)[1] >= 8}
    assert paper == set(OFFICIAL_PARAMS)


@pytest.mark.parametrize("spelling", ["ViT-B/16", "vit-b/16", "ViT-B_16", "b/16", "vit_b_16", " VIT-B/16 "])
def test_variant_spellings(spelling):
    assert parse_variant(spelling) == ("B", 16)


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown variant 'ViT-Q/16'.*ViT-B/16"):
        parse_variant("ViT-Q/16")


def test_image_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        variant_config("ViT-B/16", image_size=100)


def test_config_round_trip():
    cfg = variant_config("ViT-S/16", num_classes=7, classifier="gap", pos_embed="learned2d")
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        ViTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def _tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(num_classes=5, image_size=32)
    cfg.update(kw)
    model = create_model("ViT-testing/4", **cfg)
    for p in model.parameters():  # the zero head would hide differences in the logits
        p.data.normal_(0, 0.3) if p.ndim > 1 else p.data.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("classifier", ["token", "gap"])
@pytest.mark.parametrize("pos_embed", ["learned", "learned2d", "sincos2d", "none"])
def test_fused_and_explicit_attention_agree(classifier, pos_embed):
    model = _tiny(classifier=classifier, pos_embed=pos_embed)
    x = torch.randn(3, 3, 32, 32)
    fused = model.set_fused_attn(True)(x)
    explicit = model.set_fused_attn(False)(x)
    assert fused.shape == (3, 5)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)


def _reference_forward(model: ViT, x: torch.Tensor) -> torch.Tensor:
    """An independent float64 forward pass written from the paper's equations and the official conventions
    (patches by unfold, tanh GELU, eps 1e-6 LayerNorm, 1/sqrt(d) scaling, [class] token, head)."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    cfg, x = model.cfg, x.double()
    P, D, H = cfg.patch_size, cfg.hidden_size, cfg.num_heads
    patches = F.unfold(x, P, stride=P).transpose(1, 2)  # (N, L, C*P*P), same flattening as the conv weight
    z = patches @ sd["patch_embed.proj.weight"].reshape(D, -1).T + sd["patch_embed.proj.bias"]
    z = torch.cat([sd["cls_token"].expand(len(x), -1, -1), z], 1) + sd["pos_embed"]

    def ln(t, p):
        mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-6) * sd[p + ".weight"] + sd[p + ".bias"]

    def gelu_tanh(t):
        return 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))

    for i in range(cfg.depth):
        b = f"blocks.{i}."
        h = ln(z, b + "norm1")
        q, k, v = (h @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]).chunk(3, -1)
        split = lambda t: t.reshape(len(x), -1, H, D // H).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), -1) @ v
        z = z + a.transpose(1, 2).reshape(len(x), -1, D) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        h = ln(z, b + "norm2")
        h = gelu_tanh(h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        z = z + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
    y = ln(z, "norm")[:, 0]
    return y @ sd["head.weight"].T + sd["head.bias"]


def test_forward_matches_independent_float64_reference():
    model = _tiny().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(model(x), _reference_forward(model, x), atol=1e-10, rtol=0)
    model.float()
    torch.testing.assert_close(model(x.float()).double(), _reference_forward(model, x), atol=2e-5, rtol=0)


def test_official_initialisation():
    model = create_model("ViT-B/16", num_classes=10)
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert torch.count_nonzero(model.cls_token) == 0
    assert abs(model.pos_embed.std().item() - 0.02) < 0.001
    q = model.blocks[0].attn.qkv.weight[:768]  # xavier-uniform on the (768, 768) q kernel: bound sqrt(6/1536)
    assert q.abs().max() <= math.sqrt(6 / 1536) + 1e-7 and q.abs().max() > 0.9 * math.sqrt(6 / 1536)
    assert model.blocks[0].mlp.fc1.bias.abs().max() < 1e-5  # N(0, 1e-6)
    assert model.blocks[0].norm1.eps == 1e-6 and model.blocks[0].mlp.approximate == "tanh"


def test_every_parameter_gets_a_gradient():
    model = _tiny(representation_size=8).train()
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_gradient_checkpointing_same_gradients():
    model = _tiny().train()
    x = torch.randn(2, 3, 32, 32)
    model(x).square().sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)(x).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], atol=1e-6, rtol=1e-5)


def test_forward_intermediates():
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    out = model.forward_intermediates(x, layers=[-1], return_attn=True)
    assert out["layers"] == [1] and len(out["tokens"]) == 1 and len(out["attn"]) == 1
    assert out["attn"][0].shape == (2, 2, 65, 65)
    torch.testing.assert_close(out["attn"][0].sum(-1), torch.ones(2, 2, 65))
    torch.testing.assert_close(out["logits"], model(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["features"], model.forward_features(x))


def test_gap_pools_normalised_patch_tokens_and_has_no_class_token():
    model = _tiny(classifier="gap")
    assert model.cls_token is None and model.pos_embed.shape == (1, 64, 16)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), model.head(model.forward_features(x).mean(1)))


def test_pre_logits_head_is_tanh_layer():
    model = _tiny(representation_size=12)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)[:, 0]
    torch.testing.assert_close(model.forward_pre_logits(model.forward_features(x)),
                               torch.tanh(model.pre_logits(feats)))


def test_learned2d_concatenates_row_and_column_embeddings():
    model = _tiny(pos_embed="learned2d")
    pe = model.position_embedding()  # (1, 1 + 64, 16): class token row is zero
    assert pe.shape == (1, 65, 16) and torch.count_nonzero(pe[0, 0]) == 0
    grid = pe[0, 1:].reshape(8, 8, 16)
    torch.testing.assert_close(grid[3, 5, :8], model.pos_embed_row[0, 3])
    torch.testing.assert_close(grid[3, 5, 8:], model.pos_embed_col[0, 5])


def test_sincos_embedding_distinguishes_every_position():
    pe = sincos_2d(6, 32)[0]
    assert pe.shape == (36, 32)
    d = torch.cdist(pe, pe)
    assert (d + torch.eye(36)).min() > 1e-3


def test_input_of_wrong_size_names_expected_shape():
    model = _tiny()
    with pytest.raises(ValueError, match=r"expected \(N, 3, 32, 32\)"):
        model(torch.randn(1, 3, 28, 28))


def test_sizes_are_consistent():
    for name, s in SIZES.items():
        assert s["hidden_size"] % s["num_heads"] == 0, name


def test_attention_auto_is_explicit_on_cpu_and_sdpa_when_asked(monkeypatch):
    import vitkit.model as M

    m = create_model("ViT-testing/4", num_classes=3, image_size=16).eval()
    x = torch.randn(2, 3, 16, 16)
    ref = m.set_fused_attn(False)(x)
    calls = []
    sdpa = M.F.scaled_dot_product_attention
    monkeypatch.setattr(M.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    torch.testing.assert_close(m.set_fused_attn("auto")(x), ref, atol=0, rtol=0)  # CPU: the explicit path
    assert calls == [] and all(b.attn.fused == "auto" for b in create_model("ViT-testing/4").blocks)
    torch.testing.assert_close(m.set_fused_attn(True)(x), ref, atol=1e-5, rtol=0)
    assert len(calls) == len(m.blocks)
    assert m.set_fused_attn("explicit").blocks[0].attn.fused is False  # the --attention flag values
    assert m.set_fused_attn("sdpa").blocks[0].attn.fused is True
    with pytest.raises(ValueError, match="fused must be"):
        m.set_fused_attn("flash")


def test_keep_freed_memory_takes_effect_on_glibc():
    import platform

    from vitkit.perf import keep_freed_memory

    ok = keep_freed_memory()
    assert ok == (platform.libc_ver()[0] == "glibc")


def test_drop_path_drops_whole_examples_and_keeps_the_expectation():
    """Stochastic depth: each example's branch is all zero or all scaled by 1/(1-p); about p of them are zero."""
    from vitkit.model import drop_path

    torch.manual_seed(0)
    x = torch.ones(4000, 5, 3)
    y = drop_path(x, 0.25, training=True)
    per_example = y.flatten(1)
    dropped = (per_example == 0).all(1)
    kept = (per_example == 1 / 0.75).all(1)
    assert bool((dropped | kept).all())
    se = math.sqrt(0.25 * 0.75 / 4000)
    assert abs(dropped.float().mean().item() - 0.25) < 4 * se
    assert torch.equal(drop_path(x, 0.25, training=False), x) and torch.equal(drop_path(x, 0.0, training=True), x)


def test_drop_path_rates_rise_linearly_and_leave_evaluation_unchanged():
    torch.manual_seed(0)
    cfg = variant_config("ViT-testing/4", num_classes=5, depth=4, drop_path=0.3)
    model = ViT(cfg)
    assert [b.drop_path_rate for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    torch.nn.init.normal_(model.head.weight)  # the zero head would hide differences in the logits
    plain = ViT(cfg.replace(drop_path=0.0))
    plain.load_state_dict(model.state_dict())  # stochastic depth has no parameters: the same state dict
    x = torch.randn(64, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=0, rtol=0)
        model.train(), plain.train()
        assert not torch.equal(model(x), plain(x))  # in training some examples skip blocks
    with pytest.raises(Exception, match="drop_path must be a rate"):
        variant_config("ViT-testing/4", drop_path=1.0)
