import pytest
import torch

from nst_fast.imaging import color


def colored_image(mean, cov, h=48, w=64, seed=0):
    """A (1, 3, H, W) image whose pixels have exactly the given RGB mean and covariance."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(3, h * w, generator=gen, dtype=torch.float64)
    z = z - z.mean(1, keepdim=True)
    # Whiten the sample so its own covariance is exactly I, then colour it.
    vals, vecs = torch.linalg.eigh(z @ z.T / z.shape[1])
    z = (vecs * vals.rsqrt()) @ vecs.T @ z
    chol = torch.linalg.cholesky(torch.tensor(cov, dtype=torch.float64))
    x = chol @ z + torch.tensor(mean, dtype=torch.float64).view(3, 1)
    return x.reshape(1, 3, h, w)


def stats(img):
    x = img.reshape(3, -1).double()
    mu = x.mean(1)
    d = x - mu[:, None]
    return mu, d @ d.T / x.shape[1]


CONTENT_MEAN, CONTENT_COV = [0.45, 0.5, 0.55], [[4e-3, 1e-3, 5e-4], [1e-3, 3e-3, 8e-4], [5e-4, 8e-4, 5e-3]]
STYLE_MEAN, STYLE_COV = [0.6, 0.4, 0.35], [[2e-3, -6e-4, 2e-4], [-6e-4, 6e-3, 1e-3], [2e-4, 1e-3, 1.5e-3]]


@pytest.fixture
def content():
    img = colored_image(CONTENT_MEAN, CONTENT_COV, seed=1)
    assert 0 < img.min() and img.max() < 1  # statistics well inside [0, 1]: nothing clamps
    return img


@pytest.fixture
def style():
    img = colored_image(STYLE_MEAN, STYLE_COV, h=40, w=56, seed=2)
    assert 0 < img.min() and img.max() < 1
    return img


def test_yiq_round_trip():
    img = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(color.yiq_to_rgb(color.rgb_to_yiq(img)), img, atol=1e-6, rtol=0)
    yiq = color.rgb_to_yiq(img)
    assert torch.allclose(color.rgb_to_yiq(color.yiq_to_rgb(yiq)), yiq, atol=1e-6, rtol=0)
    # Y is the usual luma; white has no chroma.
    assert torch.allclose(yiq[:, 0], 0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2], atol=1e-6)
    assert torch.allclose(color.rgb_to_yiq(torch.ones(1, 3, 2, 2))[:, 1:], torch.zeros(1, 2, 2, 2), atol=1e-6)


def test_three_dim_images_keep_their_shape(content):
    img = content[0].float()
    assert color.rgb_to_yiq(img).shape == img.shape
    assert color.luminance_image(img).shape == img.shape
    assert color.match_color(img, img).shape == img.shape


def test_luminance_image_is_grey_y(content):
    grey = color.luminance_image(content)
    assert grey.shape == content.shape
    y = color.rgb_to_yiq(content)[:, :1]
    for c in range(3):
        assert torch.equal(grey[:, c : c + 1], y)
    # A grey image has no chroma.
    assert color.rgb_to_yiq(grey)[:, 1:].abs().max() < 1e-6


def test_match_luminance_gives_content_mean_and_std(content, style):
    ys, yc = color.luminance_image(style), color.luminance_image(content)
    for clamp in (False, True):  # nothing clips with these statistics
        out = color.match_luminance(ys, yc, clamp=clamp)
        assert out.shape == ys.shape
        assert out.mean().item() == pytest.approx(yc.mean().item(), abs=1e-9)
        assert out.std(unbiased=False).item() == pytest.approx(yc.std(unbiased=False).item(), rel=1e-9)
    # single-channel luminance maps work too
    out = color.match_luminance(ys[:, :1], yc[:, :1])
    assert out.shape == (1, 1) + ys.shape[-2:]
    assert out.std(unbiased=False).item() == pytest.approx(yc.std(unbiased=False).item(), rel=1e-9)


def test_match_luminance_clamps():
    gen = torch.Generator().manual_seed(3)
    style = torch.rand(1, 1, 32, 32, generator=gen)
    content = (torch.rand(1, 1, 32, 32, generator=gen) * 4 - 1.5)  # wider than [0, 1]
    out = color.match_luminance(style, content)
    assert out.min() >= 0 and out.max() <= 1
    assert color.match_luminance(style, content, clamp=False).max() > 1


def test_combine_luminance_keeps_content_chroma_and_stylized_y(content, style):
    stylized = colored_image(STYLE_MEAN, STYLE_COV, h=48, w=64, seed=5).float()
    out = color.combine_luminance(stylized, content.float())
    assert out.shape == stylized.shape
    unclamped = color.yiq_to_rgb(torch.cat([color.rgb_to_yiq(stylized)[:, :1], color.rgb_to_yiq(content)[:, 1:]], 1))
    assert 0 < unclamped.min() and unclamped.max() < 1  # nothing clamps in this test
    yiq_out, yiq_content, yiq_stylized = (color.rgb_to_yiq(t.double()) for t in (out, content, stylized))
    assert torch.allclose(yiq_out[:, 1:], yiq_content[:, 1:], atol=1e-2, rtol=0)
    assert torch.allclose(yiq_out[:, :1], yiq_stylized[:, :1], atol=1e-2, rtol=0)
    assert (yiq_out[:, 1:] - yiq_content[:, 1:]).abs().max() < 1e-5  # in fact exact up to float32


def test_combine_luminance_clamps_and_resizes_content():
    gen = torch.Generator().manual_seed(4)
    stylized, content = torch.rand(1, 3, 24, 32, generator=gen), torch.rand(1, 3, 48, 64, generator=gen)
    out = color.combine_luminance(stylized, content)
    assert out.shape == stylized.shape
    assert out.min() >= 0 and out.max() <= 1


def test_covariance_matching_gives_content_mean_and_covariance(content, style):
    out = color.match_covariance(style, content)
    assert out.shape == style.shape
    mu, cov = stats(out)
    mu_c, cov_c = stats(content)
    assert torch.allclose(mu, mu_c, atol=1e-10, rtol=0)
    assert torch.allclose(cov, cov_c, atol=1e-10, rtol=1e-8)
    # The clamped public entry point agrees where nothing clips (float32 images too).
    clamped = color.match_color(style.float(), content.float(), method="covariance")
    assert clamped.dtype == torch.float32
    assert torch.allclose(clamped.double(), out, atol=1e-6)
    mu, cov = stats(clamped)
    assert torch.allclose(mu, mu_c, atol=1e-6)
    assert torch.allclose(cov, cov_c, atol=1e-6, rtol=1e-4)


def test_covariance_matching_is_the_symmetric_square_root_form(content, style):
    """x' = A (x - mu_s) + mu_c with A = Sc^1/2 Ss^-1/2: one particular map among those matching."""
    mu_s, cov_s = stats(style)
    mu_c, cov_c = stats(content)

    def sqrtm(m, p):
        v, q = torch.linalg.eigh(m)
        return (q * v.pow(p)) @ q.T

    a = sqrtm(cov_c, 0.5) @ sqrtm(cov_s, -0.5)
    expect = (a @ (style.reshape(3, -1) - mu_s[:, None]) + mu_c[:, None]).reshape(style.shape)
    assert torch.allclose(color.match_covariance(style, content), expect, atol=1e-10)


def test_covariance_matching_survives_a_singular_style():
    """A grey style image has a rank-1 covariance: the epsilon keeps the result finite."""
    gen = torch.Generator().manual_seed(6)
    grey = torch.rand(1, 1, 32, 32, generator=gen).expand(1, 3, 32, 32)
    content = torch.rand(1, 3, 32, 32, generator=gen)
    out = color.match_color(grey, content)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_histogram_matching_is_exact_on_the_ranks(content):
    gen = torch.Generator().manual_seed(7)
    style = torch.rand(1, 3, 48, 64, generator=gen) ** 2  # same pixel count, other histogram
    out = color.match_color(style, content.float(), method="histogram")
    for c in range(3):
        assert torch.equal(out[0, c].flatten().sort().values, content.float()[0, c].flatten().sort().values)
        # each pixel keeps its rank: read in the style's order, the output is the sorted content
        rank_order = style[0, c].flatten().argsort(dim=0, stable=True)
        assert torch.equal(out[0, c].flatten()[rank_order], content.float()[0, c].flatten().sort().values)


def test_histogram_matching_other_sizes_hits_the_quantiles(content, style):
    out = color.match_histogram(style, content)
    n = style[0, 0].numel()
    q = torch.linspace(0, 1, n, dtype=torch.float64)
    for c in range(3):
        expect = torch.quantile(content[0, c].flatten(), q, interpolation="linear")
        assert torch.allclose(out[0, c].flatten().sort().values, expect, atol=1e-12)
    # extremes map onto the content's extremes
    assert out.amin((0, 2, 3)).tolist() == content.amin((0, 2, 3)).tolist()
    assert out.amax((0, 2, 3)).tolist() == content.amax((0, 2, 3)).tolist()


def test_bad_method_names_the_choices(content, style):
    with pytest.raises(ValueError, match="covariance.*histogram"):
        color.match_color(style, content, method="lab")


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="RGB"):
        color.rgb_to_yiq(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="one image"):
        color.match_color(torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8))
