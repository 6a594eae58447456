"""LPIPS (Zhang et al. 2018, v0.1): learned perceptual distance on AlexNet or VGG-16 features.

Own backbones with torchvision's state-dict layout (``features.<i>.weight``) so the ImageNet files
(``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) load as published, and per-layer 1×1 heads
loaded from the lpips package's ``alex.pth`` / ``vgg.pth`` (``lin<k>.model.1.weight``).

    d(x, y) = Σ_l mean_hw( w_l · (f̂_l(x) − f̂_l(y))² ),  f̂ = f / ‖f‖₂ over channels.
"""

import re

import torch
import torch.nn.functional as F
from torch import nn

# (layer spec, indices of the ReLUs whose outputs LPIPS taps); "M" = 3×3/2 max-pool
_ALEX = [(3, 64, 11, 4, 2), "R", "M", (64, 192, 5, 1, 2), "R", "M", (192, 384, 3, 1, 1), "R",
         (384, 256, 3, 1, 1), "R", (256, 256, 3, 1, 1), "R"]  # fmt: skip
_ALEX_TAPS = (1, 4, 7, 9, 11)
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG16_TAPS = (3, 8, 15, 22, 29)


def _alexnet_features() -> nn.Sequential:
    layers = []
    for spec in _ALEX:
        if spec == "R":
            layers.append(nn.ReLU())
        elif spec == "M":
            layers.append(nn.MaxPool2d(3, 2))
        else:
            cin, cout, k, stride, pad = spec
            layers.append(nn.Conv2d(cin, cout, k, stride=stride, padding=pad))
    return nn.Sequential(*layers)


def _vgg16_features() -> nn.Sequential:
    layers, cin = [], 3
    for spec in _VGG16:
        if spec == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, spec, 3, padding=1), nn.ReLU()]
            cin = spec
    return nn.Sequential(*layers)


NETS = {
    "alex": (_alexnet_features, _ALEX_TAPS, (64, 192, 384, 256, 256), "alexnet", "lpips-alex"),
    "vgg": (_vgg16_features, _VGG16_TAPS, (64, 128, 256, 512, 512), "vgg16", "lpips-vgg"),
}


class LPIPS(nn.Module):
    """``forward(x, y)`` with images in [-1, 1], (B, 3, H, W) → distances (B,)."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(NETS)}")
        build, self.taps, channels, _, _ = NETS[net]
        self.net_name = net
        self.features = build()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        # the lpips "ScalingLayer": maps [-1, 1] inputs to ImageNet-normalised ones
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.weights = "unloaded"
        self.random_weights = True

    @classmethod
    def load(
        cls,
        net: str = "alex",
        weights_dir: str | None = None,
        random_weights: bool = False,
        download: bool | None = None,
        seed: int = 0,
    ) -> "LPIPS":
        from moebius.errors import CheckpointError
        from moebius.eval.weights import find_weights, load_weight_file

        if random_weights:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = cls(net)
                # LPIPS heads are non-negative by construction (trained with a clamp)
                for head in model.heads:
                    head.weight.data.abs_()
            model.weights = f"RANDOM (seed {seed}; tests only)"
            return model.eval().requires_grad_(False)

        model = cls(net)
        _, _, _, backbone_asset, heads_asset = NETS[net]
        backbone_path = find_weights(backbone_asset, weights_dir, download)
        heads_path = find_weights(heads_asset, weights_dir, download)
        backbone = {
            k.removeprefix("features."): v
            for k, v in load_weight_file(backbone_path).items()
            if k.startswith("features.")
        }
        # "lin<k>.model.1.weight"; a full lpips module's state dict repeats them as "lins.<k>…"
        heads = {
            f"{match[1]}.weight": v
            for k, v in load_weight_file(heads_path).items()
            if (match := re.fullmatch(r"lin(\d)\.model\.1\.weight", k))
        }
        try:
            model.features.load_state_dict(backbone)
            model.heads.load_state_dict(heads)
        except RuntimeError as exc:
            raise CheckpointError(f"LPIPS-{net} weights do not fit: {exc}") from None
        model.weights = f"{backbone_path} + {heads_path}"
        model.random_weights = False
        return model.eval().requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, last = [], max(self.taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
            if i == last:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self._taps((x - self.shift) / self.scale)
        fy = self._taps((y - self.shift) / self.scale)
        return sum(
            F.conv2d((a - b) ** 2, head.weight).mean(dim=(1, 2, 3))
            for a, b, head in zip(fx, fy, self.heads, strict=True)
        )
