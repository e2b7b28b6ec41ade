"""The paper's analyses (Fig. 6, Fig. 7, App. D.7-D.8), each checked against an independent computation written
here: rollout against a direct matrix product, mean attention distance against a loop over query/key pairs, the
position-similarity grid against a double loop, filter PCs against scikit-learn's PCA."""

import math

import numpy as np
import pytest
import torch

from vitkit.analysis.attention import (attention_rollout, collect_attention, head_maps, mean_attention_distance,
                                       patch_distance_matrix, rollout_map)
from vitkit.analysis.embeddings import (embedding_filter_pcs, pos_embed_similarity, position_grid,
                                        row_column_similarity)
from vitkit.errors import UserError
from vitkit.model import create_model


def _tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(num_classes=3, image_size=16)
    cfg.update(kw)
    model = create_model("ViT-testing/4", **cfg)  # grid 4x4, 2 blocks, 2 heads
    for p in model.parameters():  # random weights everywhere, so attention is far from uniform
        p.data.normal_(0, 0.5) if p.ndim > 1 else p.data.normal_(0, 0.1)
    return model.eval()


def _attn(model, n=3):
    torch.manual_seed(1)
    return collect_attention(model, torch.randn(n, model.cfg.in_chans, 16, 16))


@pytest.fixture(scope="module")
def token_run():
    model = _tiny()
    return model, _attn(model)


def test_collected_attention_is_softmax_of_every_block(token_run):
    model, out = token_run
    assert len(out["attn"]) == 2 and out["has_cls"] and out["grid"] == 4 and out["pixels_per_token"] == 4
    for a in out["attn"]:
        assert a.shape == (3, 2, 17, 17)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 2, 17))
    # the weights are the model's own: recompute block 0's attention from its q/k projections
    torch.manual_seed(1)  # the input _attn used
    x_in = torch.randn(3, 3, 16, 16)
    z = model.blocks[0].norm1(model.embed(x_in))
    q, k, _ = model.blocks[0].attn.qkv(z).split(16, dim=-1)
    q, k = q.view(3, 17, 2, 8).transpose(1, 2), k.view(3, 17, 2, 8).transpose(1, 2)
    ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out["attn"][0], ref, atol=1e-5, rtol=1e-5)


def test_rollout_matches_direct_matrix_product(token_run):
    _, out = token_run
    got = attention_rollout(out["attn"])
    a = [t.double().numpy() for t in out["attn"]]
    for n in range(3):
        ref = np.eye(17)
        for layer in a:
            m = 0.5 * layer[n].mean(0) + 0.5 * np.eye(17)  # (A + I) / 2: rows of A sum to 1
            ref = m @ ref
        np.testing.assert_allclose(got[n], ref, rtol=1e-6, atol=1e-9)  # float32 softmax rows sum to 1 +- 1e-7
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-10)  # product of row-stochastic matrices
    # without the residual term: the plain product
    plain = attention_rollout(out["attn"], residual=False)
    np.testing.assert_allclose(plain[0], a[1][0].mean(0) @ a[0][0].mean(0), rtol=1e-10)


def test_rollout_map_and_head_maps_read_the_right_entries(token_run):
    _, out = token_run
    r = attention_rollout(out["attn"])
    m = rollout_map(r, 4, has_cls=True)
    assert m.shape == (3, 4, 4)
    for row in range(4):
        for col in range(4):
            assert m[2, row, col] == r[2, 0, 1 + row * 4 + col]
    h = head_maps(out["attn"][-1], 4, has_cls=True)
    assert h.shape == (3, 2, 4, 4)
    assert h[1, 1, 2, 3] == pytest.approx(float(out["attn"][-1][1, 1, 0, 1 + 2 * 4 + 3]))


def test_gap_model_rollout_is_mean_over_query_patches():
    model = _tiny(classifier="gap")
    out = _attn(model, n=2)
    assert not out["has_cls"] and out["attn"][0].shape == (2, 2, 16, 16)
    r = attention_rollout(out["attn"])
    m = rollout_map(r, 4, has_cls=False)
    np.testing.assert_allclose(m[1].ravel(), r[1].mean(axis=0), rtol=1e-12)
    h = head_maps(out["attn"][0], 4, has_cls=False)
    np.testing.assert_allclose(h[0, 1].ravel(), out["attn"][0][0, 1].double().numpy().mean(0), rtol=1e-6)


def _mad_brute_force(attn, grid, patch, has_cls, renormalize):
    a = [t.double().numpy() for t in attn]
    n, heads = a[0].shape[:2]
    off = 1 if has_cls else 0
    res = np.zeros((len(a), heads))
    for li, layer in enumerate(a):
        for h in range(heads):
            total = 0.0
            for img in range(n):
                for qi in range(grid * grid):
                    qr, qc = qi // grid, qi % grid
                    w_sum = sum(layer[img, h, off + qi, off + kj] for kj in range(grid * grid))
                    acc = 0.0
                    for kj in range(grid * grid):
                        kr, kc = kj // grid, kj % grid
                        dist = patch * math.hypot(qr - kr, qc - kc)
                        w = layer[img, h, off + qi, off + kj]
                        acc += (w / w_sum if renormalize else w) * dist
                    total += acc
            res[li, h] = total / (n * grid * grid)
    return res


@pytest.mark.parametrize("renormalize", [True, False])
def test_mean_attention_distance_matches_brute_force_loop(token_run, renormalize):
    _, out = token_run
    got = mean_attention_distance(out["attn"], grid=4, patch_size=4, has_cls=True, renormalize=renormalize)
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, _mad_brute_force(out["attn"], 4, 4, True, renormalize), rtol=1e-10)
    per_image = mean_attention_distance(out["attn"], 4, 4, True, renormalize=renormalize, reduce=False)
    assert per_image.shape == (3, 2, 2)
    np.testing.assert_allclose(per_image.mean(0), got, rtol=1e-12)


def test_mean_attention_distance_gap_and_known_cases():
    model = _tiny(classifier="gap")
    out = _attn(model, n=2)
    got = mean_attention_distance(out["attn"], 4, 4, has_cls=False)
    np.testing.assert_allclose(got, _mad_brute_force(out["attn"], 4, 4, False, True), rtol=1e-10)
    # attention to oneself only: distance 0; uniform attention: the mean pairwise centre distance
    eye = np.broadcast_to(np.eye(16), (1, 1, 16, 16))
    assert mean_attention_distance([eye], 4, 16, has_cls=False)[0, 0] == 0.0
    uni = np.full((1, 1, 16, 16), 1 / 16)
    d = patch_distance_matrix(4, 16)
    assert mean_attention_distance([uni], 4, 16, has_cls=False)[0, 0] == pytest.approx(d.mean())
    assert d[0, 15] == pytest.approx(16 * math.sqrt(18))  # corner to corner of a 4x4 grid of 16-px patches


def test_pos_embed_similarity_matches_double_loop():
    torch.manual_seed(0)
    model = _tiny()
    pe = position_grid(model)
    assert pe.shape == (16, 16)  # [class] entry dropped
    np.testing.assert_allclose(pe, model.pos_embed[0, 1:].detach().double().numpy(), rtol=1e-7)
    sim = pos_embed_similarity(pe)
    assert sim.shape == (16, 4, 4)
    for i in range(16):
        for j in range(16):
            ref = pe[i] @ pe[j] / (np.linalg.norm(pe[i]) * np.linalg.norm(pe[j]))
            assert sim[i, j // 4, j % 4] == pytest.approx(ref, rel=1e-10, abs=1e-12)
    # (g, g, D) input gives the same
    np.testing.assert_allclose(pos_embed_similarity(pe.reshape(4, 4, -1)), sim)


def test_position_grid_for_every_kind():
    for kind in ("learned2d", "sincos2d"):
        m = create_model("ViT-testing/4", num_classes=3, image_size=16, pos_embed=kind)
        assert position_grid(m).shape == (16, 16)
    assert position_grid(create_model("ViT-testing/4", num_classes=3, image_size=16, pos_embed="none")) is None


def test_row_column_structure_detected_on_learned2d():
    # learned2d embeddings are [row emb; col emb]: same row/column positions share half of the vector
    torch.manual_seed(0)
    m = create_model("ViT-testing/4", num_classes=3, image_size=16, pos_embed="learned2d")
    s = row_column_similarity(pos_embed_similarity(position_grid(m)))
    assert s["same_row"] > s["other"] + 0.2 and s["same_col"] > s["other"] + 0.2
    # brute-force check of one summary number
    sim = pos_embed_similarity(position_grid(m)).reshape(16, 16)
    vals = [sim[i, j] for i in range(16) for j in range(16) if i != j and i // 4 == j // 4]
    assert s["same_row"] == pytest.approx(np.mean(vals))


def test_embedding_filter_pcs_match_sklearn_pca():
    from sklearn.decomposition import PCA

    torch.manual_seed(0)
    w = torch.randn(40, 3, 4, 4) * torch.linspace(0.1, 2, 48).view(1, 3, 4, 4)
    comps, ratio = embedding_filter_pcs(w, k=6)
    assert comps.shape == (6, 3, 4, 4) and ratio.shape == (6,)
    pca = PCA(n_components=6, svd_solver="full").fit(w.reshape(40, -1).double().numpy())
    np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, rtol=1e-8)
    dots = np.abs((comps.reshape(6, -1) * pca.components_).sum(1))  # equal up to sign
    np.testing.assert_allclose(dots, 1.0, rtol=1e-8)
    flat = comps.reshape(6, -1)
    assert (flat[np.arange(6), np.abs(flat).argmax(1)] > 0).all()  # sign convention
    assert embedding_filter_pcs(w, k=1000)[0].shape[0] == 40  # capped at min(D, C*P*P)


def test_models_without_attention_are_user_errors():
    with pytest.raises(UserError, match="not a vitkit ViT"):
        collect_attention(torch.nn.Linear(3, 3), torch.zeros(1, 3))
    no_blocks = create_model("ViT-testing/4", num_classes=3, image_size=16, depth=0)
    with pytest.raises(UserError, match="no Transformer blocks"):
        collect_attention(no_blocks, torch.zeros(1, 1, 16, 16))
    with pytest.raises(UserError, match="no attention weights"):
        attention_rollout([])
    with pytest.raises(UserError, match="expected"):
        attention_rollout([np.zeros((2, 3))])


# ---------------------------------------------------------------------------------- figures, explain, the CLI


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from PIL import Image

    import vitkit

    d = tmp_path_factory.mktemp("analyze")
    vitkit.save_checkpoint(d / "ck", _tiny(), class_names=["cat", "dog", "bird"])
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    return d


def test_plot_functions_return_agg_figures(token_run, tmp_path):
    from matplotlib.figure import Figure

    from vitkit.analysis import plots

    model, out = token_run
    comps, ratio = embedding_filter_pcs(model.patch_embed.proj.weight, 5)
    imgs = np.random.default_rng(0).integers(0, 255, (3, 3, 16, 16), dtype=np.uint8)
    r = rollout_map(attention_rollout(out["attn"]), 4, True)
    figs = [plots.plot_embedding_filters(comps, ratio),
            plots.plot_pos_embed_similarity(pos_embed_similarity(position_grid(model))),
            plots.plot_attention_distance(mean_attention_distance(out["attn"], 4, 4, True), 16),
            plots.plot_rollout_overlays(imgs, r, ["a", "b", "c"]),
            plots.plot_head_maps(imgs, head_maps(out["attn"][-1], 4, True), layer=2),
            plots.plot_explanation(imgs[0], r[0], [("a", 0.7), ("b", 0.3)], "rollout")]
    for i, fig in enumerate(figs):
        assert isinstance(fig, Figure) and fig.get_axes()
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").read_bytes()[:4] == b"\x89PNG"
    ax = figs[2].get_axes()[0]
    assert ax.get_xlabel() == "Network depth (layer)" and "pixels" in ax.get_ylabel()
    assert len(ax.collections) == 2  # one scatter per head


def test_write_explanation(tiny_ckpt):
    import vitkit
    from vitkit.analysis.explain import open_image, write_explanation

    loaded = vitkit.load(tiny_ckpt / "ck")
    model = loaded.model
    res = write_explanation(loaded, open_image(tiny_ckpt / "im0.png"), tiny_ckpt / "ex" / "e.png", topk=2)
    assert (tiny_ckpt / "ex" / "e.png").read_bytes()[:4] == b"\x89PNG"
    assert [t["class"] for t in res["topk"]][0] in ("cat", "dog", "bird") and len(res["topk"]) == 2
    assert res["topk"][0]["prob"] >= res["topk"][1]["prob"] and "[class] token" in res["label"]
    x = loaded.preprocess([open_image(tiny_ckpt / "im0.png")])
    ref = attention_rollout(collect_attention(model, x)["attn"])[0, 0, 1:].reshape(4, 4)
    np.testing.assert_allclose(np.array(res["map"]), ref, atol=1e-6)
    with pytest.raises(UserError, match="cannot read image"):
        write_explanation(loaded, tiny_ckpt / "broken.png", tiny_ckpt / "e2.png")
    with pytest.raises(UserError, match="does not exist"):
        write_explanation(model, tiny_ckpt / "missing.png", tiny_ckpt / "e2.png")


def test_analyze_cli_writes_every_figure_and_json(tiny_ckpt, capsys):
    import json

    from vitkit.cli import main

    out = tiny_ckpt / "an"
    assert main(["analyze", str(tiny_ckpt / "ck"), "--images", str(tiny_ckpt / "im0.png"),
                 str(tiny_ckpt / "im1.png"), "--out", str(out)]) == 0
    names = {"embedding_filters.png", "pos_embed_similarity.png", "attention_distance.png",
             "attention_rollout.png", "attention_heads_last.png"}
    for n in names:
        assert (out / n).read_bytes()[:4] == b"\x89PNG"
    rep = json.loads((out / "analysis.json").read_text())
    assert set(rep["figures"].values()) == names
    assert np.array(rep["mean_attention_distance"]["pixels"]).shape == (2, 2)
    assert rep["mean_attention_distance"]["num_images"] == 2
    assert len(rep["attention_maps"]["images"]) == 2
    # bad input: one-line errors, exit code 2
    assert main(["analyze", str(tiny_ckpt / "ck"), "--images", str(tiny_ckpt / "broken.png"), "--out",
                 str(out)]) == 2
    assert main(["analyze", str(tiny_ckpt / "ck"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("vitkit: error: ") for e in err)
    assert "cannot read image" in err[0] and "--dataset" in err[1]


def test_analyze_cli_on_a_gap_model_and_the_embedded_dataset(tmp_path):
    import json

    import vitkit
    from vitkit.cli import main

    torch.manual_seed(0)
    m = create_model("ViT-testing/7", num_classes=10, image_size=28, in_chans=1, classifier="gap",
                     pos_embed="none")
    vitkit.save_checkpoint(tmp_path / "ck", m)
    assert main(["analyze", str(tmp_path / "ck"), "--dataset", "embedded", "--num-images", "20", "--show", "3",
                 "--out", str(tmp_path / "an")]) == 0
    rep = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert "GAP" in rep["attention_maps"]["label"] and "pos_embed_similarity" not in rep["figures"]
    assert rep["mean_attention_distance"]["num_images"] == 20 and len(rep["attention_maps"]["images"]) == 3
    assert any("no position embedding" in n for n in rep["notes"])


# ------------------------------------------------------------- the same rollout from other checkpoint formats


def test_rollout_from_an_official_npz_equals_the_native_one(tmp_path):
    npz = pytest.importorskip("vitkit.checkpoint.npz")
    if not hasattr(npz, "save_npz"):
        pytest.skip("vitkit.checkpoint.npz has no save_npz")
    import vitkit

    model = _tiny()
    npz.save_npz(model, tmp_path / "m.npz")
    loaded = vitkit.load(tmp_path / "m.npz").model
    x = torch.randn(2, 3, 16, 16)
    a, b = collect_attention(model, x), collect_attention(loaded, x)
    np.testing.assert_allclose(attention_rollout(b["attn"]), attention_rollout(a["attn"]), atol=1e-6)


def test_rollout_of_a_hugging_face_model_matches_its_own_attentions(tmp_path):
    """A transformers ViT saved with save_pretrained, loaded through vitkit.checkpoint.hf: the rollout of vitkit's
    attention equals the rollout of the attentions transformers itself returns (output_attentions=True)."""
    pytest.importorskip("vitkit.checkpoint.hf")
    transformers = pytest.importorskip("transformers")
    import vitkit

    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(cfg).eval()
    for p in hf.parameters():
        p.data.normal_(0, 0.5)
    hf.save_pretrained(tmp_path / "hf")
    model = vitkit.load(tmp_path / "hf").model
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        hf.config._attn_implementation = "eager"  # the path that returns the softmax weights
        ref = hf(pixel_values=x, output_attentions=True).attentions
    ours = collect_attention(model, x)["attn"]
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(attention_rollout(ours), attention_rollout(ref), atol=1e-6)


def test_float64_model_gets_float64_inputs():
    model = _tiny().double()
    out = collect_attention(model, torch.randn(1, 3, 16, 16))  # float32 input, float64 weights
    assert out["attn"][0].dtype == torch.float64
