"""Classifier loading, the IN-9 label map and checkpoint safety."""
import os
import pickle

import numpy as np
import pytest
import reference
import torch
from conftest import TinyNet

from advbg.data.labels import IN9_CLASSES, IN9_IMAGENET_INDICES, imagenet_to_in9
from advbg.errors import ModelError
from advbg.models.checkpoints import read_state_dict
from advbg.models.label_map import in9_map, make_label_map
from advbg.models.loading import load_classifier


def test_in9_table_equals_the_reference_table_typed_in_from_the_protocol():
    want = reference.in9_table()
    np.testing.assert_array_equal(imagenet_to_in9(), want)
    np.testing.assert_array_equal(np.array(in9_map().table), want)
    assert (want >= 0).sum() == 370 and tuple(int((want == k).sum()) for k in range(9)) == reference.IN9_COUNTS
    assert in9_map().class_names == IN9_CLASSES
    for k, name in enumerate(IN9_CLASSES):
        assert sorted(IN9_IMAGENET_INDICES[name]) == sorted(reference.IN9_INDICES[k]), name
    assert want[171] == want[172] == -1 and (want[281:286] == -1).all()


@pytest.mark.parametrize("kind", ["in9", "identity"])
def test_label_map_prediction_and_margin_equal_the_plain_reference(kind):
    n = 1000 if kind == "in9" else 9
    lm = make_label_map(kind, n)
    table = reference.table_for(kind, n)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, n, generator=g)
    if kind == "in9":
        logits[::7, 281] += 10           # some top-1s in unmapped classes (domestic cats): the "none" group
        logits[1::7, 171] += 10          # and in the two unmapped dog indices
    true = torch.randint(0, 9, (300,), generator=g)
    pred, margin = lm.predict(logits), lm.margin(logits, true)
    rows = logits.numpy()
    want_pred = [reference.mapped_prediction(rows[r], table) for r in range(300)]
    want_margin = [reference.margin(rows[r], int(true[r]), table) for r in range(300)]
    assert pred.tolist() == want_pred
    np.testing.assert_allclose(margin.numpy(), want_margin, rtol=0, atol=1e-6)
    assert torch.equal(margin < 0, pred != true)         # margin < 0 <=> the mapped top-1 is not the true class
    if kind == "in9":
        assert (pred == -1).sum() >= 80 and (pred >= 0).any()


def test_label_map_that_does_not_fit_the_model_is_refused():
    with pytest.raises(ModelError, match="expects 1000 model outputs, the model has 37"):
        make_label_map("in9", 37)
    with pytest.raises(ModelError, match="unknown label map"):
        make_label_map("coco", 1000)


@pytest.fixture(scope="module")
def lite0():
    return load_classifier("advbg/lite0", device="cpu")


def _photo(name):
    import cv2
    import skimage.data

    im = getattr(skimage.data, name)()[..., :3]
    h, w = im.shape[:2]
    s = 256 / min(h, w)
    im = cv2.resize(im, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    h, w = im.shape[:2]
    y, x = (h - 224) // 2, (w - 224) // 2
    return torch.from_numpy(im[y:y + 224, x:x + 224].copy()).permute(2, 0, 1)[None].float() / 255


def test_lite0_reproduces_known_top1_on_bundled_photos(lite0):
    with torch.no_grad():
        coffee = lite0(_photo("coffee")).argmax(1).item()
        cat = lite0(_photo("chelsea")).argmax(1).item()
    assert coffee == 967                     # espresso
    assert cat in (281, 282, 285)            # tabby / tiger / Egyptian cat: a domestic cat, unmapped in IN-9
    assert lite0.config.weights_sha256.startswith("5793442")
    assert lite0.config.mean == (0.5, 0.5, 0.5) and lite0.config.input_size == (3, 224, 224)
    assert lite0.config.label_map == "in9" and lite0.config.class_names == IN9_CLASSES


def test_lite0_on_demo_foregrounds_matches_labels(lite0):
    """The labelled ImageNet photos of the demo store are mostly classified right without any background change."""
    from pathlib import Path

    from advbg.data.store import Store

    demo = Path(__file__).resolve().parents[1] / "advbg" / "data" / "demo.h5"
    assert demo.exists(), "advbg/data/demo.h5 is committed; rebuild it with python data/build_demo.py"
    with Store(demo) as s:
        x = torch.from_numpy(s.foregrounds.read(slice(None))).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            logits = lite0(x).numpy()
        pred = np.array([reference.mapped_prediction(row, reference.in9_table()) for row in logits])
        assert (pred == s.foregrounds.labels).mean() >= 0.75


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ModelError, match="unknown model 'resnet5O'; did you mean resnet50"):
        load_classifier("resnet5O")


def test_missing_offline_weights_say_how_to_provide_them(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not available offline.*--weights PATH"):
        load_classifier("resnet18.a1_in1k")


def test_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(ModelError, match="refusing to load"):
        load_classifier(str(path), arch="resnet18")
    assert not marker.exists()


def test_state_dict_and_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    from advbg._compat import import_timm

    timm = import_timm()
    net = timm.create_model("resnet18", pretrained=False, num_classes=9)
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "r18.safetensors")
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        want = net.eval()(x)
    for f in ("r18.pt", "r18.safetensors"):
        clf = load_classifier(str(tmp_path / f), arch="resnet18", norm="0,1")
        assert clf.config.num_outputs == 9 and clf.config.label_map == "identity"
        assert clf.config.weights_sha256 and clf.config.source == "checkpoint"
        with torch.no_grad():
            assert torch.allclose(clf(x), want, atol=1e-4)


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    torch.save(TinyNet().state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ModelError, match="does not fit architecture 'resnet18'"):
        load_classifier(str(tmp_path / "tiny.pt"), arch="resnet18")
    with pytest.raises(ModelError, match="does not record its architecture"):
        load_classifier(str(tmp_path / "tiny.pt"))


def test_read_state_dict_rejects_non_tensor_payloads(tmp_path):
    torch.save({"a": 1, "b": [1, 2]}, tmp_path / "x.pt")
    with pytest.raises(ModelError, match="state dict of tensors"):
        read_state_dict(tmp_path / "x.pt")
