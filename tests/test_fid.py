"""FID: the Frechet distance against closed forms, the Inception-v3 layout, local weights only."""

import numpy as np
import pytest
import torch

from disdis.errors import DisdisError
from disdis.metrics import frechet_distance
from disdis.metrics.fid import InceptionFeatures, gaussian_of, load_inception


def test_frechet_distance_closed_forms():
    rs = np.random.RandomState(0)
    a = rs.randn(5, 5)
    sigma = a @ a.T + np.eye(5)
    mu = rs.randn(5)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    s1, s2, m2 = rs.rand(5) + 0.1, rs.rand(5) + 0.1, rs.randn(5)
    expected = np.sum((mu - m2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu, np.diag(s1), m2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # covariances sharing eigenvectors: the same formula on the eigenvalues
    q, _ = np.linalg.qr(rs.randn(5, 5))
    assert frechet_distance(mu, q @ np.diag(s1) @ q.T, m2, q @ np.diag(s2) @ q.T) == pytest.approx(expected, rel=1e-8)
    # one dimension: (m1 - m2)^2 + (sd1 - sd2)^2; a rank-deficient pair stays finite
    assert frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(5.0)
    assert frechet_distance(np.zeros(2), np.diag([4.0, 0.0]), np.zeros(2), np.diag([1.0, 0.0])) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(DisdisError, match="shapes do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    x = rs.randn(400, 3)
    mean, cov = gaussian_of(x)
    np.testing.assert_allclose(cov, np.cov(x.T)) and np.testing.assert_allclose(mean, x.mean(0))


def test_inception_has_the_fid_layout_and_loads_only_local_weights(tmp_path):
    """The parameter count is torchvision's published one for Inception-v3 (27,161,264, its model
    card), less its auxiliary head and with the FID graph's 1008-way classifier instead of 1000;
    2048-d features; weights from a file, safetensors or a tensors-only state dict; a file of the
    wrong network is a clear error."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    net = InceptionFeatures().eval()
    aux_head = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)  # conv, BN, conv, BN, fc
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - aux_head + 8 * (2048 + 1) == 23_850_960
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        features = net(x)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save(net.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        with torch.no_grad():
            assert torch.equal(load_inception(tmp_path / name)(x), features)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DisdisError, match="not the FID Inception weights"):
        load_inception(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a file")
    with pytest.raises(DisdisError, match="not a readable weights file"):
        load_inception(tmp_path / "junk.pth")
