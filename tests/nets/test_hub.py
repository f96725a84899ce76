"""torchvision's weights in torch's cache: checked against their published hash, read
without running code, and a damaged file named as such."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch
from torchvision import models

from nst_fast.errors import WeightsUnavailable
from nst_fast.nets import hub, vgg

VGG19_URL = models.VGG19_Weights.IMAGENET1K_V1.url


class _RunsCode:
    """Pickled, it calls os.system on load: what a hostile weights file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache, and no download: tests run offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("NST_FAST_WEIGHTS", raising=False)

    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("no network here")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


def _hostile_file(path, marker):
    torch.save({"features.0.weight": _RunsCode(marker)}, path)


def _published_as(monkeypatch, path):
    """Make torchvision's VGG-19 URL name `path`'s file, hash included, as if it were the published one."""
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    named = path.with_name(f"vgg19-{prefix}.pth")
    path.rename(named)
    monkeypatch.setattr(models.VGG19_Weights.IMAGENET1K_V1.value, "url",
                        f"https://download.pytorch.org/models/{named.name}")
    return named


def test_a_hostile_file_in_the_cache_is_refused_unread(torch_home, tmp_path):
    marker = tmp_path / "ran"
    cached = torch_home / os.path.basename(VGG19_URL)
    _hostile_file(cached, marker)
    with pytest.raises(WeightsUnavailable) as caught:
        vgg.load_weights("imagenet")
    assert str(caught.value) == (
        f"the cached VGG-19 weights {cached} are damaged or not torchvision's (their SHA-256 does not begin "
        "dcbb9e9d, as the published file's does): delete the file to download it again")
    assert not marker.exists()


def test_a_file_that_matches_its_hash_still_runs_no_code(torch_home, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    _hostile_file(torch_home / "hostile.pth", marker)
    cached = _published_as(monkeypatch, torch_home / "hostile.pth")
    with pytest.raises(WeightsUnavailable, match=f"cannot read weights file {cached}: it holds a posix.system"):
        vgg.load_weights("imagenet")
    assert not marker.exists()


def test_cached_weights_that_match_their_hash_load(torch_home, random_weights_file, monkeypatch):
    copy = torch_home / "copy.pth"
    copy.write_bytes(random_weights_file.read_bytes())
    _published_as(monkeypatch, copy)
    state, convention, _ = vgg.load_weights("imagenet")
    assert convention == "torchvision"
    assert torch.equal(state["0.weight"], torch.load(random_weights_file, weights_only=True)["features.0.weight"])


def test_a_cut_short_cache_file_is_named_as_damaged_not_as_a_download(torch_home, random_weights_file):
    cached = torch_home / os.path.basename(VGG19_URL)
    cached.write_bytes(random_weights_file.read_bytes()[:4096])
    with pytest.raises(WeightsUnavailable, match=f"the cached VGG-19 weights {cached} are damaged"):
        vgg.load_weights("imagenet")


def test_no_cache_and_no_network_says_what_to_do(torch_home):
    with pytest.raises(WeightsUnavailable, match=r"cannot download torchvision's VGG-16 weights \(OSError\)"):
        vgg.load_weights("imagenet", network="vgg16")


def test_a_download_goes_where_the_cache_is_and_names_the_published_hash(torch_home, monkeypatch):
    asked = {}
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, hash_prefix=None, progress=True: asked.update(url=url, dst=dst,
                                                                                       hash_prefix=hash_prefix))
    with pytest.raises(WeightsUnavailable):  # nothing was written, so nothing to read
        vgg.load_weights("imagenet")
    assert asked == {"url": VGG19_URL, "dst": str(torch_home / "vgg19-dcbb9e9d.pth"), "hash_prefix": "dcbb9e9d"}
    assert hub.published_hash(models.AlexNet_Weights.IMAGENET1K_V1.url) == "7be5be79"


def test_the_cli_refuses_a_hostile_cached_file_in_one_line(tmp_path, small_images):
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    marker = tmp_path / "ran"
    _hostile_file(checkpoints / "vgg19-dcbb9e9d.pth", marker)
    env = {k: v for k, v in os.environ.items() if k != "NST_FAST_WEIGHTS"}
    content, style = small_images
    out = tmp_path / "out.png"
    result = subprocess.run([sys.executable, "-m", "nst_fast.app.cli", str(content), str(style), "-o", str(out),
                             "--size", "32", "--steps", "2", "--device", "cpu"],
                            capture_output=True, text=True, timeout=120, env={**env, "TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"nst-fast: error: the cached VGG-19 weights {checkpoints / 'vgg19-dcbb9e9d.pth'} are damaged or not "
        "torchvision's (their SHA-256 does not begin dcbb9e9d, as the published file's does): delete the file to "
        "download it again"]
    assert not marker.exists() and not out.exists()
