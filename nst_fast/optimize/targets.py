"""What a scale of a run optimises towards and from where: the loss with its content
and style targets, the image it starts from, and the colour preservation around them."""
import torch

from ..errors import NstError
from ..imaging import color, images
from ..losses import mrf, wasserstein
from ..losses.gatys import GatysLoss, GuidedStyle, WeightedSum, gram_target
from ..losses.mrf import MRFStyle
from ..losses.wasserstein import WassersteinStyle
from .devices import precision_mode


def scale_loss(net, content_t, style_imgs, opts, size, min_side, masks, devices) -> GatysLoss:
    """The loss at a scale of (H, W) = size; with masks, each style's loss covers its
    mask's region."""
    device = devices[0]
    with torch.no_grad(), precision_mode(opts.precision, devices):
        content_feats = net(content_t.to(device))
        content_targets = {n: content_feats[n].float().clone() for n in opts.content_layers}
        style_feats = [_style_features(net, img, opts, size, min_side, device) for img in style_imgs]
        layer_hw = {n: content_feats[n].shape[-2:] for n in opts.style_layers}
        layer_masks = None
        if masks:  # each style's mask at each style layer's resolution (spatial control)
            layer_masks = {n: [images.resize_mask(images.resize_mask(m, size), layer_hw[n])
                               .to(content_feats[n].device) for m in masks] for n in opts.style_layers}
        style_targets = _style_targets(opts, style_feats, layer_hw, layer_masks,
                                       {n: content_feats[n].dtype for n in opts.style_layers})
    return GatysLoss(net, content_targets, style_targets, opts.content_layers, opts.style_layers,
                     opts.content_weight, opts.style_weight, opts.tv_weight, opts.normalize_gradients)


def _style_features(net, img, opts, size, min_side, device) -> dict:
    """A style image's features at each style layer, at this scale's style size; for
    MRF variants, a list of the variants' features per layer."""
    s = images.resize_long_side(img, opts.style_side(max(size)))
    if min(s.shape[-2:]) < min_side:
        raise NstError(f"a style image is {s.shape[-1]}x{s.shape[-2]} pixels after scaling; "
                       f"it needs at least {min_side} pixels per side")
    if opts.mrf_variants:
        variants = [net(v.to(device)) for v in mrf.style_variants(s)]
        return {n: [f[n] for f in variants] for n in opts.style_layers}
    feats = net(s.to(device))
    return {n: feats[n] for n in opts.style_layers}


def _style_targets(opts, style_feats, layer_hw, layer_masks, dtypes) -> dict:
    """{style layer: the target its style loss compares with}, for opts.style_loss."""
    blends, layers = opts.style_blend, opts.style_layers
    masks_at = (lambda n: layer_masks[n]) if layer_masks else (lambda n: None)
    if opts.style_loss == "w2":
        return {n: _w2_targets(style_feats, n, blends, masks_at(n)) for n in layers}
    if opts.style_loss == "mrf":
        _check_patches(list(layer_hw.values()) + [_first(f[n]).shape[-2:] for f in style_feats for n in f])
        return {n: MRFStyle([f[n] for f in style_feats], blends, masks_at(n)) for n in layers}
    if layer_masks:
        return {n: _guided_targets(style_feats, n, layer_masks[n], blends, dtypes[n]) for n in layers}
    return {n: sum(blend * gram_target(f[n], layer_hw[n].numel()) for f, blend in zip(style_feats, blends))
            for n in layers}


def _guided_targets(style_feats, layer, masks, blends, dtype) -> list:
    """One GuidedStyle per style whose mask still covers positions at this layer."""
    guides = []
    for feats, mask, blend in zip(style_feats, masks, blends):
        mask = mask.to(dtype)  # the features' dtype: no cast per step
        positions = float(mask.float().square().sum())
        if positions > 1e-6:  # else the region vanished at this depth
            guides.append(GuidedStyle(mask, gram_target(feats[layer], positions), blend, positions))
    return guides


def _w2_targets(style_feats, layer, blends, masks=None):
    """The W2 loss of one layer: against the blended styles' moments, or under spatial
    control, a blend of each style's loss over its own region."""
    if masks is None:
        return WassersteinStyle(wasserstein.blend([wasserstein.moments(f[layer]) for f in style_feats], blends))
    return WeightedSum([(blend, WassersteinStyle(wasserstein.moments(f[layer]), mask))
                        for f, mask, blend in zip(style_feats, masks, blends)
                        if float(mask.square().sum()) > 1e-6])


def _first(features):
    """A style's features at a layer, or the first of its MRF variants'."""
    return features[0] if isinstance(features, list) else features


def _check_patches(layer_sizes):
    smallest = min(min(hw) for hw in layer_sizes)
    if smallest < mrf.PATCH:
        raise NstError(f"the MRF style loss needs {mrf.PATCH}x{mrf.PATCH} patches of features, but a style "
                       f"layer is only {smallest} positions across here; use a larger size or shallower layers")


def initial_image(opts, content_t, style_imgs, previous, device) -> torch.Tensor:
    """The image a scale starts from: the last scale's result upscaled (coarse-to-fine),
    else as opts.init says."""
    h, w = content_t.shape[-2:]
    if previous is not None:
        start = torch.nn.functional.interpolate(previous.cpu(), size=(h, w), mode="bicubic").clamp(0, 1)
    elif isinstance(opts.init, str) and opts.init in _INITS:
        start = _INITS[opts.init](opts, content_t, style_imgs, (h, w))
    else:
        start = torch.nn.functional.interpolate(images.to_tensor(opts.init, max(h, w)), size=(h, w), mode="bicubic")
    return start.to(device, torch.float32).contiguous()


def _noise(opts, content_t, style_imgs, hw):
    return torch.rand((1, 3, *hw), generator=torch.Generator().manual_seed(opts.seed))


def _gray(opts, content_t, style_imgs, hw):
    return 0.5 + (_noise(opts, content_t, style_imgs, hw) - 0.5) / 255  # 1/255 noise breaks symmetry


def _style(opts, content_t, style_imgs, hw):
    return torch.nn.functional.interpolate(style_imgs[0], size=hw, mode="bicubic").clamp(0, 1)


def _style_stats(opts, content_t, style_imgs, hw):
    """Noise with the styles' colour statistics (per channel; crowsonkb's init)."""
    blends = torch.tensor(opts.style_blend).view(-1, 1)
    means = torch.stack([img.mean(dim=(0, 2, 3)) for img in style_imgs])
    squares = torch.stack([img.square().mean(dim=(0, 2, 3)) for img in style_imgs])
    mean = (blends * means).sum(0)
    std = ((blends * squares).sum(0) - mean.square()).clamp_min(0).sqrt()
    noise = torch.randn((1, 3, *hw), generator=torch.Generator().manual_seed(opts.seed))
    return (mean.view(1, 3, 1, 1) + std.view(1, 3, 1, 1) * noise).clamp(0, 1)


_INITS = {"noise": _noise, "gray": _gray, "content": lambda opts, content_t, style_imgs, hw: content_t,
          "style": _style, "style_stats": _style_stats}


def preserve_colors(mode, content, styles):
    """-> (content, styles) to optimise with, and finish(image) giving what the user sees.

    luminance: optimise grey images (the style's luminance matched to the content's)
    and put the content's chroma back at the end; match/histogram: recolour the
    styles to the content's colour statistics first.
    """
    if mode in ("match", "histogram"):
        method = "covariance" if mode == "match" else "histogram"
        styles = [color.match_color(s, content, method) for s in styles]
    original = content
    if mode == "luminance":
        content = color.luminance_image(content)
        styles = [color.luminance_image(color.match_luminance(color.luminance_image(s), content)) for s in styles]

    def finish(image):
        image = image.detach().float().clamp(0, 1).cpu()
        if mode == "luminance":
            image = color.combine_luminance(image, images.resize_long_side(original, max(image.shape[-2:])))
        return image

    return content, styles, finish
