"""With the real (partial, Caffe-convention) VGG-19 weights: the stylization does what Gatys promises."""
import pytest
import torch
from conftest import EXAMPLES, SHARED_WEIGHTS

from nst_fast import StyleTransfer
from nst_fast.imaging import images
from nst_fast.losses.gatys import gram_target, style_scale

pytestmark = pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="shared pretrained weights absent")
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1"]


@pytest.mark.slow
def test_output_takes_style_statistics_and_keeps_content():
    transfer = StyleTransfer(weights=str(SHARED_WEIGHTS), device="cpu")
    assert transfer.convention == "caffe"
    content = images.resize_long_side(images.to_tensor(EXAMPLES / "content.png"), 128)
    style = images.resize_long_side(images.to_tensor(EXAMPLES / "style.png"), 128)  # as the loop does
    out = transfer.stylize_tensor(content, style, size=128, steps=100, content_layers="relu3_2",
                                  style_layers=",".join(STYLE_LAYERS), style_weight=1e2)

    net = transfer.network(STYLE_LAYERS + ["relu3_2"])
    style_same_size = torch.nn.functional.interpolate(style, size=content.shape[-2:], mode="bicubic").clamp(0, 1)
    with torch.no_grad():
        f_out, f_content, f_style = net(out), net(content), net(style_same_size)
        f_style_native = net(style)

    def style_distance(feats):
        total = 0.0
        for name in STYLE_LAYERS:
            f = feats[name]
            c, m = f.shape[1], f.shape[2] * f.shape[3]
            target = gram_target(f_style_native[name], m)
            total += style_scale(c, m) * (gram_target(f, m) - target).square().sum().item()
        return total

    def content_distance(feats):
        return (feats["relu3_2"] - f_content["relu3_2"]).norm().item()

    # The output's Gram matrices are far (10x) closer to the style's than the content image's
    # are (measured 0.036) ...
    assert style_distance(f_out) < 0.1 * style_distance(f_content)
    # ... while its content features stay closer to the content image's than the style
    # image's are (measured 0.65).
    assert content_distance(f_out) < 0.8 * content_distance(f_style)
