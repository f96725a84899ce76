"""Colour preservation (Gatys et al. 2016, "Preserving Color in Neural Artistic Style Transfer").

Images are float (1, 3, H, W) RGB tensors in [0, 1] (a (3, H, W) tensor works too;
the result has the input's shape). Two ways to keep the content's colours:

  luminance transfer: stylise luminance-only images (`luminance_image`, the style's
      luminance matched to the content's by `match_luminance`), then put the
      content's colour back (`combine_luminance`);
  colour matching: recolour the style image to the content's colour statistics
      before stylising (`match_color`).
"""
import torch
import torch.nn.functional as F

# NTSC YIQ (FCC). The inverse is computed from this matrix, so the two are exact inverses.
_RGB_TO_YIQ = torch.tensor([
    [0.299, 0.587, 0.114],
    [0.595716, -0.274453, -0.321263],
    [0.211456, -0.522591, 0.311135],
], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
COLOR_METHODS = ("covariance", "histogram")


def _check(img: torch.Tensor, what: str = "image") -> torch.Tensor:
    if not isinstance(img, torch.Tensor) or img.dim() not in (3, 4) or img.shape[-3] != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"{what} must be a (1, 3, H, W) or (3, H, W) RGB tensor, got {shape}")
    if img.dim() == 4 and img.shape[0] != 1:
        raise ValueError(f"{what} must hold one image, got a batch of {img.shape[0]}")
    return img


def _mix(img: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 matrix to the channel dimension (dim -3), computed in float64."""
    out = torch.einsum("ij,...jhw->...ihw", matrix.to(img.device), img.double())
    return out.to(img.dtype if img.is_floating_point() else torch.float32)


def rgb_to_yiq(img: torch.Tensor) -> torch.Tensor:
    return _mix(_check(img), _RGB_TO_YIQ)


def yiq_to_rgb(img: torch.Tensor) -> torch.Tensor:
    return _mix(_check(img), _YIQ_TO_RGB)


def luminance_image(img: torch.Tensor) -> torch.Tensor:
    """The image's luminance Y repeated in all three channels (a grey RGB image)."""
    y = rgb_to_yiq(img).narrow(-3, 0, 1)
    return y.expand_as(img).contiguous()


def _y(img: torch.Tensor) -> torch.Tensor:
    """Luminance of a (.., 1, H, W) luminance map or a (.., 3, H, W) image (Y of its YIQ)."""
    if img.shape[-3] == 1:
        return img
    return rgb_to_yiq(img).narrow(-3, 0, 1)


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Shift and scale the style's luminance to the mean and std of the content's.

    Takes luminance images (`luminance_image`) or single-channel luminance maps and
    returns style_y's shape: (Y_s - mu_s) * sigma_c / sigma_s + mu_c, per the paper.
    clamp keeps the result in [0, 1] (then the statistics hold only where nothing clipped).
    """
    ys, yc = _y(style_y).double(), _y(content_y).double()
    mu_s, sd_s = ys.mean(), ys.std(unbiased=False)
    mu_c, sd_c = yc.mean(), yc.std(unbiased=False)
    out = (style_y.double() - mu_s) * (sd_c / sd_s.clamp_min(1e-12)) + mu_c
    if clamp:
        out = out.clamp(0, 1)
    return out.to(style_y.dtype)


def combine_luminance(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """RGB from the stylised result's Y and the content's I and Q, clamped to [0, 1].

    The content is resized to the stylised image's size if they differ.
    """
    _check(stylized, "stylized"), _check(content, "content")
    if content.shape[-2:] != stylized.shape[-2:]:
        batched = content if content.dim() == 4 else content.unsqueeze(0)
        scale_down = content.shape[-1] > stylized.shape[-1] or content.shape[-2] > stylized.shape[-2]
        batched = F.interpolate(batched.float(), size=stylized.shape[-2:], mode="bicubic",
                                align_corners=False, antialias=scale_down)
        content = batched if content.dim() == 4 else batched.squeeze(0)
    luma = rgb_to_yiq(stylized).narrow(-3, 0, 1)
    chroma = rgb_to_yiq(content.to(stylized.device)).narrow(-3, 1, 2)
    yiq = torch.cat([luma, chroma], -3)
    return yiq_to_rgb(yiq).clamp(0, 1)


def _pixels(img: torch.Tensor) -> torch.Tensor:
    """(.., 3, H, W) -> (3, H*W) float64."""
    return img.reshape(3, -1).double()


def _sym_power(cov: torch.Tensor, power: float, eps: float) -> torch.Tensor:
    """cov ** power for a symmetric positive semi-definite matrix, eigenvalues floored at eps."""
    vals, vecs = torch.linalg.eigh(cov)
    return (vecs * vals.clamp_min(eps).pow(power)) @ vecs.T


def match_covariance(style: torch.Tensor, content: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Affine recolouring of the style making its RGB mean and covariance the content's (unclamped).

    x' = A (x - mu_s) + mu_c with A = Sigma_c^(1/2) Sigma_s^(-1/2) (symmetric square
    roots from eigendecompositions, in float64); then A Sigma_s A^T = Sigma_c exactly
    wherever Sigma_s's eigenvalues exceed eps.
    """
    _check(style, "style"), _check(content, "content")
    xs, xc = _pixels(style), _pixels(content.to(style.device))
    mu_s, mu_c = xs.mean(1, keepdim=True), xc.mean(1, keepdim=True)
    ds, dc = xs - mu_s, xc - mu_c
    cov_s, cov_c = ds @ ds.T / xs.shape[1], dc @ dc.T / xc.shape[1]
    a = _sym_power(cov_c, 0.5, 0.0) @ _sym_power(cov_s, -0.5, eps)
    return (a @ ds + mu_c).reshape(style.shape).to(style.dtype)


def match_histogram(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram matching: each style pixel takes the content's value at its rank.

    The k-th smallest of N style values becomes the content's quantile k / (N - 1)
    (linear interpolation between the content's sorted values), so with equal pixel
    counts each channel's sorted values are exactly the content's.
    """
    _check(style, "style"), _check(content, "content")
    xs, xc = _pixels(style), _pixels(content.to(style.device))
    n_s, n_c = xs.shape[1], xc.shape[1]
    sorted_c = xc.sort(1).values
    order = xs.argsort(dim=1, stable=True)
    # k * (n_c - 1) / (n_s - 1): exact integers when the counts are equal.
    pos = torch.arange(n_s, dtype=torch.float64, device=xs.device) * (n_c - 1) / max(n_s - 1, 1)
    lo = pos.floor().long().clamp(max=n_c - 1)
    hi = (lo + 1).clamp(max=n_c - 1)
    frac = pos - lo
    quantiles = sorted_c[:, lo] * (1 - frac) + sorted_c[:, hi] * frac
    out = torch.empty_like(xs)
    out.scatter_(1, order, quantiles)
    return out.reshape(style.shape).to(style.dtype)


def match_color(style: torch.Tensor, content: torch.Tensor, method: str = "covariance") -> torch.Tensor:
    """The style image recoloured to the content's colour statistics, clamped to [0, 1].

    method: "covariance" (mean and 3x3 covariance, `match_covariance`) or
    "histogram" (per-channel histograms, `match_histogram`).
    """
    if method == "covariance":
        out = match_covariance(style, content)
    elif method == "histogram":
        out = match_histogram(style, content)
    else:
        raise ValueError(f"unknown colour matching method {method!r}; choose one of {', '.join(COLOR_METHODS)}")
    return out.clamp(0, 1)
