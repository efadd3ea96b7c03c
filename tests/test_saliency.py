"""Grad-CAM saliency: foreground share, bootstrap intervals, captum against a direct Grad-CAM, layer rule, CLI."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, make_random_store, make_tiny_classifier, register_tiny, run_cli
from torch import nn

from advbg.analysis.saliency import bootstrap_mean, foreground_share, grad_cam, target_layer
from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.data.writer import write_store
from advbg.errors import ModelError

captum = pytest.importorskip("captum", reason="the [saliency] extra (captum) is not installed: Grad-CAM NOT checked")


class TokenNet(nn.Module):
    """ViT-shaped: a patch-embedding conv, then 3-D tokens, mean over tokens, a head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 8, stride=8)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 9)
        self.num_classes = 9

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)   # (N, tokens, 16)
        return self.head(self.mix(t).mean(1))


register_tiny("test/tokens", TokenNet, architecture="tokennet")


# --------------------------------------------------------------------------------------------- foreground share
def test_share_is_one_inside_zero_outside_and_normalised_one_for_uniform():
    rng = np.random.default_rng(0)
    masks = np.zeros((5, 20, 24), np.uint8)
    for m in masks:
        y, x = rng.integers(0, 10, 2)
        m[y:y + rng.integers(3, 10), x:x + rng.integers(3, 12)] = 1
    inside = rng.random(masks.shape) * masks
    outside = rng.random(masks.shape) * (1 - masks)
    share, area, _ = foreground_share(inside, masks)
    assert np.all(share == 1.0)
    assert np.allclose(area, masks.mean((1, 2)))
    assert np.all(foreground_share(outside, masks)[0] == 0.0)
    _, _, norm = foreground_share(np.full(masks.shape, 0.7), masks)
    assert np.allclose(norm, 1.0)


def test_share_counts_positive_mass_only_and_is_undefined_without_mass_or_mask():
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, :2] = 1
    m = np.zeros((1, 4, 4))
    m[0, 0, 0], m[0, 3, 3], m[0, 2, 2] = 3.0, 1.0, -50.0    # a negative value outside must not count
    assert foreground_share(m, mask)[0][0] == pytest.approx(0.75)
    assert np.isnan(foreground_share(np.zeros((1, 4, 4)), mask)[0][0])
    assert np.isnan(foreground_share(m, np.zeros_like(mask))[0][0])


def test_bootstrap_is_seeded_and_brackets_the_mean():
    v = np.random.default_rng(3).normal(0.4, 0.1, 50)
    a, b = bootstrap_mean(v, seed=1), bootstrap_mean(v, seed=1)
    assert a == b and a.n == 50 and a.mean == pytest.approx(v.mean())
    assert a.low < a.mean < a.high
    # a plain reference: resample, take the 2.5 / 97.5 percentiles of the means (same generator stream)
    rng = np.random.default_rng(1)
    means = v[rng.integers(0, 50, (2000, 50))].mean(1)
    assert (a.low, a.high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    nan = bootstrap_mean(np.r_[v, np.nan], seed=1)
    assert nan.n == 50 and nan.mean == pytest.approx(v.mean())
    assert bootstrap_mean([np.nan]).mean is None


# --------------------------------------------------------------------------------------------- Grad-CAM oracle
def test_captum_gradcam_equals_direct_activations_times_mean_gradients():
    torch.manual_seed(0)
    clf = make_tiny_classifier(seed=2)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    target = 4
    # direct Grad-CAM: A = conv output, w_c = spatial mean of d score / d A_c, map = ReLU(sum_c w_c A_c)
    net = clf.model
    acts = {}
    h = net.conv.register_forward_hook(lambda m, i, o: acts.setdefault("A", o))
    xin = x.clone().requires_grad_(True)
    score = net(((xin - 0.5) / 0.25))[0, target]
    h.remove()
    (grad,) = torch.autograd.grad(score, acts["A"])
    direct = torch.relu((grad.mean((2, 3), keepdim=True) * acts["A"]).sum(1, keepdim=True))
    want = F.interpolate(direct, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]

    name, layer = target_layer(clf.model, (3, 32, 32))
    assert name == "conv"
    got = grad_cam(clf, layer, x, torch.tensor([target]))
    assert got.shape == (1, 32, 32)
    assert float(direct.detach().max()) > 0
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


def test_target_layer_rule_on_timm_models():
    from advbg._compat import import_timm

    timm = import_timm()
    for arch in ("resnet18", "tf_efficientnet_lite0"):
        model = timm.create_model(arch, pretrained=False).eval()
        _, layer = target_layer(model, (3, 64, 64))
        out = {}
        h = layer.register_forward_hook(lambda m, i, o, out=out: out.setdefault("y", o))
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            feats = model.forward_features(x)
        h.remove()
        assert torch.equal(out["y"], feats), arch     # the layer gives exactly what forward_features returns
    with pytest.raises(ModelError, match=r"final feature map is 1x1"):
        target_layer(timm.create_model("resnet18", pretrained=False).eval(), (3, 32, 32))
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    with pytest.raises(ModelError, match="not supported for VisionTransformer.*tokens"):
        target_layer(vit, (3, 224, 224))
    with pytest.raises(ModelError, match="not supported for TokenNet"):
        target_layer(TokenNet(), (3, 32, 32))


# --------------------------------------------------------------------------------------------- command line
def test_cli_writes_results_that_match_the_maps(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=11, seed=1)
    out = tmp_path / "sal.json"
    code, text, err = run_cli(["saliency", "-s", str(store), "-m", "test/tiny", "-V",
                               "original,bg_white", "--results-file", str(out), "--maps", str(tmp_path / "m.npz"),
                               "-b", "3", "-q"], capsys)
    assert code == 0, err
    assert "fg share" in text and (tmp_path / "sal.png").is_file()
    res = json.loads(out.read_text())
    maps = np.load(tmp_path / "m.npz")
    with Store(store) as s:
        masks = s.foregrounds.read_masks(slice(None))
    for v in res["variants"]:
        m = maps[v["variant"]].astype(np.float64)
        assert m.shape == (7, 32, 32) and (m >= 0).all()
        assert list(maps[v["variant"] + "_fg_index"]) == list(range(7))
        ref = [(mi * (k > 0)).sum() / mi.sum() for mi, k in zip(m, masks)]     # float16 maps: loose tolerance
        got = [d["share"] for d in v["images_detail"]]
        assert np.allclose(got, ref, atol=2e-3)
        assert v["overall"]["share"]["mean"] == pytest.approx(np.mean(got))
    code, text, err = run_cli(["saliency", "-s", str(store), "-m", "test/tiny", "-V", "mixed_rand",
                               "--results-file", str(tmp_path / "sal.csv"), "--grid", "-", "-q"], capsys)
    assert code == 0, err
    rows = (tmp_path / "sal.csv").read_text().splitlines()
    assert rows[0].startswith("variant,fg_index") and len(rows) == 8


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    code, _, err = run_cli(["saliency", "-s", str(store), "-m", "test/tiny", "-V", "mixed_rnd"], capsys)
    assert_one_line_error(code, err, "unknown variant 'mixed_rnd'; did you mean mixed_rand")
    code, _, err = run_cli(["saliency", "-s", str(store), "-m", "test/tokens", "-q"], capsys)
    assert_one_line_error(code, err, "Grad-CAM is not supported for TokenNet")
    rng = np.random.default_rng(0)
    bare = write_store(tmp_path / "bare.h5", class_names=IN9_CLASSES,
                       fg_images=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
                       fg_masks=np.zeros((3, 32, 32), np.uint8), fg_labels=np.array([0, 1, 2]),
                       bg_images=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), bg_labels=np.array([0, 1]),
                       fg_source_ids=["a", "b", "c"], bg_source_ids=["d", "e"])
    out = tmp_path / "never.json"
    code, _, err = run_cli(["saliency", "-s", str(bare), "-m", "test/tiny", "--results-file", str(out),
                            "-q"], capsys)
    assert_one_line_error(code, err, "no foreground masks")
    assert not out.exists()
    code, _, err = run_cli(["saliency", "-s", str(store), "-m", "test/tiny", "--target", "both"], capsys)
    assert_one_line_error(code, err, "target must be one of true, pred")
    code, _, err = run_cli(["saliency", "-s", str(store), "-m", "test/tiny", "--seed", "-1"], capsys)
    assert_one_line_error(code, err, "seed must be a non-negative integer|--seed")


# --------------------------------------------------------------------------------------------- store checks
def _damage(store, what):
    import h5py

    if what == "label":
        with h5py.File(store, "r+") as f:
            f["foregrounds/label"][2] = 99
        return "labels of .* are outside 0..8 \\(e.g. 99\\)"
    with h5py.File(store, "r") as f:
        info = f["foregrounds/image"].id.get_chunk_info(2)
    with open(store, "r+b") as fh:      # flip bytes in the middle of foreground 2's gzip stream
        fh.seek(info.byte_offset + info.size // 2)
        chunk = bytearray(fh.read(8))
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    return "cannot read .*the store is damaged"


@pytest.mark.parametrize("what", ["label", "chunk"])
def test_a_store_search_refuses_is_refused_by_saliency_in_the_same_line(tmp_path, capsys, what):
    store = make_random_store(tmp_path / "s.h5", n_fg=5, n_bg=3)
    pattern = _damage(store, what)
    code, _, err = run_cli(["search", "--store", str(store), "--model", "test/tiny", "-q"], capsys)
    assert_one_line_error(code, err, pattern)
    out = tmp_path / "never.json"
    code, _, err = run_cli(["saliency", "-s", str(store), "-m", "test/tiny", "-V", "original",
                            "--results-file", str(out), "-q"], capsys)
    assert_one_line_error(code, err, pattern)
    assert not out.exists()
