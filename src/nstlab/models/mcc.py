"""MCCNet: "Arbitrary Video Style Transfer via Multi-Channel Correlation" (Deng et al., AAAI 2021;
code diyiiyiii/MCCNet). Numbers: docs/methods.md#mcc.

    content ─VGG─► relu4_1 ─ f(mvn) ───────────────────────┐
    style   ─VGG─► relu4_1 ─ g(mvn) ─ v = Σg²/Σg ─ fc ─────┴─ ⊙ ─ out_conv ─ + Fc ─ decoder ─► image

Image-only training as in its train.py (no temporal loss): content, style, two identity terms,
an illumination term (the output must not move when Gaussian noise is added to the content)
and total variation.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.errors import ConfigError
from nstlab.functional import mvn, total_variation
from nstlab.models.blocks import FeatureTransferNet


class MCCModule(nn.Module):
    """Multi-channel correlation at relu4_1 (MCCNet net.py MCCNet.forward, without its unused conv h).
    content (B, C, h, w), style (B, C, h', w') -> (B, C, h, w)."""

    def __init__(self, channels: int):
        super().__init__()
        self.f = nn.Conv2d(channels, channels, 1)
        self.g = nn.Conv2d(channels, channels, 1)
        self.fc = nn.Linear(channels, channels)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(
        self, content_features: dict[str, torch.Tensor], style_features: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        content = content_features["relu4_1"]
        queries = self.f(mvn(content))  # (B, C, h, w)
        keys = self.g(mvn(style_features["relu4_1"])).flatten(2)  # (B, C, h'·w')
        # v[c] = Σ g² / Σ g over style positions (the code's bmm(G, Gᵀ) / G.sum), as means. Σ g equals
        # H·W·bias_g[c] (mvn features sum to 0), so a bias near 0 makes v large: the released code has
        # no guard against it, and neither has a faithful run.
        channel_correlation = keys.square().mean(dim=2) / keys.mean(dim=2)  # (B, C)
        channel_weights = self.fc(channel_correlation)[..., None, None]  # (B, C, 1, 1)
        return content + self.out_conv(queries * channel_weights)


def replica_sum_weights(weights: dict[str, float], replicas: int) -> dict[str, float]:
    """The weights that make one process's loss equal the official Σ over `replicas` DataParallel
    replicas (equal shares of the batch): mean-based terms × replicas, the summed TV term × 1."""
    return {name: weight if name == "tv" else weight * replicas for name, weight in weights.items()}


class MCC(FeatureTransferNet):
    name = "mcc"
    # MCCNet train.py loss_cal: content 3, style 10, identity 70 and 1, noise 3000, TV 10e-5 (= 1e-4)
    loss_defaults = {
        "content": 3.0,
        "style": 10.0,
        "identity1": 70.0,
        "identity2": 1.0,
        "illumination": 3000.0,
        "tv": 1e-4,
    }
    # net.py: noise std drawn once per step from U(0.01, 0.02). train.py runs the model under
    # DataParallel on 2 GPUs and back-propagates loss.sum() of the replicas' losses: each replica's
    # mean-based terms are means over its half-batch, so they count `dataparallel_replicas` times,
    # while the summed TV term adds up to one full-batch sum. 1 = one process's plain loss.
    option_defaults = {"noise_std_range": (0.01, 0.02), "dataparallel_replicas": 2}
    last_layer = "relu4_1"

    def __init__(self, cfg):
        super().__init__(cfg)
        noise_range = self.options["noise_std_range"]
        if len(noise_range) != 2 or not 0 <= noise_range[0] <= noise_range[1]:
            raise ConfigError(
                f"baselines.mcc.options.noise_std_range = {noise_range!r}: "
                "give [low, high] with 0 ≤ low ≤ high"
            )
        replicas, batch_size = self.options["dataparallel_replicas"], cfg.baselines["mcc"].batch_size
        whole = isinstance(replicas, int) and not isinstance(replicas, bool)
        if not whole or replicas < 1 or batch_size % replicas:
            raise ConfigError(
                f"baselines.mcc.options.dataparallel_replicas = {replicas!r}: give a whole "
                f"number ≥ 1 that divides baselines.mcc.batch_size = {batch_size}"
            )
        self.loss_weights = replica_sum_weights(self.loss_weights, replicas)
        self.transform = MCCModule(self.encoder.channels["relu4_1"])

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms: content (mvn relu4_1 + relu5_1), style (relu1_1…relu5_1), identity1,
        identity2, illumination = MSE(D(T(φ(Ic + n), φ(Is))), Ics) with n ~ N(0, σ²),
        σ ~ U(0.01, 0.02), and tv = Σ|∇ Ics| (MCCNet net.py Net.forward)."""
        step = self.transfer_step(content, style)
        terms = self.content_style_identity_terms(step)
        if self.loss_weights["illumination"]:
            low, high = self.options["noise_std_range"]
            noise_std = low + (high - low) * torch.rand(()).item()
            noisy_content = step.content + noise_std * torch.randn_like(step.content)
            noisy_output = self.decoder(
                self.transform(self.encoder(noisy_content, self.last_layer), step.style_features)
            )
            terms["illumination"] = F.mse_loss(
                noisy_output, step.output
            )  # both sides carry gradients, as the code
        if self.loss_weights["tv"]:
            terms["tv"] = total_variation(step.output.float())  # a sum over every pixel: fp32 under AMP
        return terms
