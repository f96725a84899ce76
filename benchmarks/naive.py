"""A naive, tutorial-style Gatys loop: the baseline the benchmarks compare against.

As in the PyTorch neural-transfer tutorial: torchvision's VGG-19 with loss
modules spliced in, out-of-place ReLUs, a torch.mm Gram matrix, F.mse_loss and
torch.optim.LBFGS. It optimises the same objective as nst_fast (same layers,
same normalisation), so the two do the same work per step.
"""
import torch
import torch.nn.functional as F
from torch import nn

from nst_fast.nets import vgg


class Normalization(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, img):
        return (img - self.mean) / self.std


def gram_matrix(features):
    b, c, h, w = features.size()
    f = features.view(b * c, h * w)
    return torch.mm(f, f.t())


class ContentLoss(nn.Module):
    def __init__(self, target, weight):
        super().__init__()
        self.target, self.weight = target.detach(), weight

    def forward(self, x):
        self.loss = self.weight * 0.5 * F.mse_loss(x, self.target, reduction="sum")
        return x


class StyleLoss(nn.Module):
    def __init__(self, target_gram, weight):
        super().__init__()
        self.target, self.weight = target_gram.detach(), weight

    def forward(self, x):
        _, c, h, w = x.shape
        self.loss = self.weight / (4.0 * c**2 * (h * w) ** 2) * F.mse_loss(gram_matrix(x), self.target,
                                                                           reduction="sum")
        return x


def build(state, content, style, content_layers, style_layers, alpha, beta, device):
    """-> (model, content loss modules, style loss modules), targets computed from the images."""
    deepest = max(vgg.LAYER_INDEX[n] for n in list(content_layers) + list(style_layers))
    features = vgg._build(deepest + 1, "max")
    features.load_state_dict({k: v for k, v in state.items() if int(k.split(".")[0]) <= deepest})
    features.to(device)
    model = nn.Sequential(Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).to(device))
    content_losses, style_losses = [], []
    for i, layer in enumerate(features):
        name = vgg.LAYER_NAMES[i]
        if isinstance(layer, nn.ReLU):
            layer = nn.ReLU(inplace=False)
        model.add_module(name, layer)
        if name in content_layers:
            loss = ContentLoss(model(content).detach(), alpha * content_layers[name])
            model.add_module(f"content_{name}", loss)
            content_losses.append(loss)
        if name in style_layers:
            f = model(style).detach()
            loss = StyleLoss(gram_matrix(f), beta * style_layers[name])
            model.add_module(f"style_{name}", loss)
            style_losses.append(loss)
    model.requires_grad_(False)
    return model.to(device).eval(), content_losses, style_losses


def run(state, content, style, content_layers, style_layers, alpha, beta, steps, device):
    """`steps` loss evaluations (forward + backward) of torch.optim.LBFGS; returns the image."""
    content, style = content.to(device), style.to(device)
    model, c_losses, s_losses = build(state, content, style, content_layers, style_layers, alpha, beta, device)
    x = content.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], max_iter=steps, history_size=10)
    evaluations = [0]

    def closure():
        optimizer.zero_grad()
        model(x)
        loss = sum(m.loss for m in c_losses) + sum(m.loss for m in s_losses)
        loss.backward()
        evaluations[0] += 1
        return loss

    while evaluations[0] < steps:
        optimizer.step(closure)
        optimizer.max_iter = steps - evaluations[0]
    return x.detach()
