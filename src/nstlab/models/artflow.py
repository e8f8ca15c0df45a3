"""ArtFlow (An, Huang, Xiong, Luo; CVPR 2021): style transfer through an invertible Glow.

A projection flow maps the content and the style image to latents; AdaIN (or WCT) mixes the
latents; the same flow, run exactly backwards, maps the mixture to pixels. Nothing is lost on
the way in, so content details survive ("content leak"-free). Every number:
docs/methods.md#artflow (pkuanjie/ArtFlow: glow_adain.py, glow_wct.py, net.py, train.py).

    image (B, 3, H, W) ─ squeeze ─ 8 × flow ─ squeeze ─ 8 × flow ─► latent (B, 48, H/4, W/4)
    flow = ActNorm ─► invertible 1×1 conv (LU) ─► additive coupling
    output = Glow⁻¹( AdaIN(Glow(content), Glow(style)) )

Parameter names follow the official glow_adain.py (blocks.N.flows.M.actnorm.loc, ...), so the
released ArtFlow-AdaIN `glow.pth` loads into `ArtFlow.glow` with `load_state_dict`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.models.base import StyleModel
from nstlab.models.encoders import NormalisedVGG
from nstlab.errors import ConfigError
from nstlab.functional import adain, crop_to, pad_to_multiple
from nstlab.losses import mean_std_style_loss
from nstlab.models.blocks import method_settings, part_counts

# train.py defaults: --n_block 2, --n_flow 8, AffineCoupling(filter_size=512), --operator adain.
# first_batch: train.py's first iteration runs the flow on the content batch under no_grad (the
# ActNorm data init) and `continue`s, so that batch trains nothing ("init_only"); "train": the
# first step initialises ActNorm in its forward and updates on the batch.
DEFAULT_OPTIONS = {"blocks": 2, "flows": 8, "hidden": 512, "transfer": "adain", "first_batch": "init_only"}
TRANSFERS = ("adain", "wct")
FIRST_BATCH = ("init_only", "train")
# train.py: --content_weight 0.1, --style_weight 1 (its --mse_weight is 0 and left out).
PAPER_LOSS_WEIGHTS = {"content": 0.1, "style": 1.0}
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")  # net.py: enc_1 … enc_4
CONTENT_LAYER = "relu4_1"
WCT_EIGEN_FLOOR = 1e-5  # glow_wct.py keeps eigen-directions with eigenvalue >= 1e-5


# ---------------------------------------------------------------------------------------------
# The flow, one invertible step at a time. Each module has forward(x) and reverse(y), exact inverses.


class ActNorm(nn.Module):
    """Per-channel affine y = scale · (x + loc) (Glow §3.1), initialised from the first batch.

    The first forward sets loc = −mean and scale = 1/(std + 1e-6) per channel over that batch
    (glow_adain.py ActNorm.initialize: unbiased std). `initialized` is a buffer, so a resumed run
    or a loaded checkpoint does not initialise again. (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))  # uint8 as the official

    @torch.no_grad()
    def initialize(self, inputs: torch.Tensor) -> None:
        per_channel = inputs.transpose(0, 1).flatten(1)  # (C, B·H·W)
        self.loc.copy_(-per_channel.mean(dim=1).view_as(self.loc))
        self.scale.copy_(1.0 / (per_channel.std(dim=1).view_as(self.scale) + 1e-6))
        self.initialized.fill_(1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.initialized.item():
            self.initialize(inputs)
        return self.scale * (inputs + self.loc)

    def reverse(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs / self.scale - self.loc


class InvConv2dLU(nn.Module):
    """Invertible 1×1 convolution, W = P · (L + I) · (U + diag(sign(s) · exp(log|s|))) (Glow §3.2).

    Starts from a random rotation's LU factors (glow_adain.py InvConv2dLU); P, the masks and the
    signs of s are fixed buffers, L, U and log|s| train (2·C² + C parameters).
    """

    def __init__(self, channels: int):
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels)).Q
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        upper_mask = torch.triu(torch.ones(channels, channels), 1)
        self.register_buffer("w_p", permutation)
        self.register_buffer("u_mask", upper_mask)
        self.register_buffer("l_mask", upper_mask.T.contiguous())
        self.register_buffer("s_sign", torch.sign(diagonal))
        self.register_buffer("l_eye", torch.eye(channels))
        self.w_l = nn.Parameter(lower)
        self.w_s = nn.Parameter(diagonal.abs().log())
        self.w_u = nn.Parameter(torch.triu(upper, 1))

    def weight(self) -> torch.Tensor:
        """The (C, C) matrix W."""
        lower = self.w_l * self.l_mask + self.l_eye
        upper = self.w_u * self.u_mask + torch.diag(self.s_sign * torch.exp(self.w_s))
        return self.w_p @ lower @ upper

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.conv2d(inputs, self.weight()[..., None, None])

    def reverse(self, outputs: torch.Tensor) -> torch.Tensor:
        # Inverted in float64: the fp32 inverse alone costs ~1e-6 per flow, 16 flows deep.
        inverse = torch.linalg.inv(self.weight().double()).to(outputs.dtype)
        return F.conv2d(outputs, inverse[..., None, None])


class ZeroConv2d(nn.Module):
    """3×3 conv on input padded with the constant 1, zero-initialised, output × exp(3·scale).

    Zero init makes every coupling start as the identity (Glow §3.3; glow_adain.py ZeroConv2d).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=0)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(inputs, (1, 1, 1, 1), value=1.0)) * torch.exp(3.0 * self.scale)


class AdditiveCoupling(nn.Module):
    """First half of the channels passes; the second half += NN(first half) (NICE / Glow, additive).

    NN = conv 3×3 C/2→hidden, ReLU, conv 1×1 hidden→hidden, ReLU, ZeroConv2d hidden→C/2; the two
    plain convs start from N(0, 0.05²) weights and zero biases (glow_adain.py AffineCoupling with
    affine=False, train.py's default).
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels // 2, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, channels // 2),
        )
        for conv in (self.net[0], self.net[2]):
            nn.init.normal_(conv.weight, 0.0, 0.05)
            nn.init.zeros_(conv.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        passed, updated = inputs.chunk(2, dim=1)
        return torch.cat([passed, updated + self.net(passed)], dim=1)

    def reverse(self, outputs: torch.Tensor) -> torch.Tensor:
        passed, updated = outputs.chunk(2, dim=1)
        return torch.cat([passed, updated - self.net(passed)], dim=1)


class Flow(nn.Module):
    """ActNorm -> invertible 1×1 conv -> additive coupling; reverse runs them backwards."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv2dLU(channels)
        self.coupling = AdditiveCoupling(channels, hidden)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.coupling(self.invconv(self.actnorm(inputs)))

    def reverse(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.actnorm.reverse(self.invconv.reverse(self.coupling.reverse(outputs)))


class Block(nn.Module):
    """Squeeze (B, C, H, W) -> (B, 4C, H/2, W/2), then `flows` flows. No split, no prior (ArtFlow)."""

    def __init__(self, in_channels: int, flows: int, hidden: int):
        super().__init__()
        self.flows = nn.ModuleList(Flow(4 * in_channels, hidden) for _ in range(flows))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # pixel_unshuffle orders channels as c·4 + 2·dy + dx, the same as the official view/permute.
        hidden = F.pixel_unshuffle(inputs, 2)
        for flow in self.flows:
            hidden = flow(hidden)
        return hidden

    def reverse(self, outputs: torch.Tensor) -> torch.Tensor:
        for flow in reversed(self.flows):
            outputs = flow.reverse(outputs)
        return F.pixel_shuffle(outputs, 2)


class Glow(nn.Module):
    """images (B, 3, H, W), H and W multiples of 2**blocks <-> latents (B, 3·4**blocks, H/2**blocks, W/2**blocks)."""

    def __init__(self, blocks: int, flows: int, hidden: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(3 * 4**index, flows, hidden) for index in range(blocks))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            images = block(images)
        return images

    def reverse(self, latents: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.blocks):
            latents = block.reverse(latents)
        return latents


# ---------------------------------------------------------------------------------------------
# Latent transfer


def wct(content_latents: torch.Tensor, style_latents: torch.Tensor) -> torch.Tensor:
    """Whitening-colouring transform (Li et al. 2017), one sample at a time.

    content (B, C, H, W), style (B, C, H', W') -> (B, C, H, W): the content's channel covariance
    is whitened away and replaced by the style's, then the style mean is added. The official
    glow_wct.py flattens the whole batch with `z.view(C, -1)`, which mixes samples when B > 1; we
    transform each pair on its own. As glow_wct.py: no identity added to the content covariance,
    eigen-directions below 1e-5 dropped. Computed in float64 (eigh) for stability.
    """
    outputs = []
    for content, style in zip(content_latents, style_latents):
        content_flat, style_flat = content.flatten(1).double(), style.flatten(1).double()  # (C, N)
        content_flat = content_flat - content_flat.mean(dim=1, keepdim=True)
        style_mean = style_flat.mean(dim=1, keepdim=True)
        style_flat = style_flat - style_mean
        content_values, content_vectors = torch.linalg.eigh(
            content_flat @ content_flat.T / (content_flat.shape[1] - 1)
        )
        style_values, style_vectors = torch.linalg.eigh(style_flat @ style_flat.T / (style_flat.shape[1] - 1))
        content_kept = content_values >= WCT_EIGEN_FLOOR
        style_kept = style_values >= WCT_EIGEN_FLOOR
        whiten_scale = torch.where(content_kept, content_values.clamp_min(WCT_EIGEN_FLOOR).rsqrt(), 0.0)
        colour_scale = torch.where(style_kept, style_values.clamp_min(0.0).sqrt(), 0.0)
        whiten = content_vectors @ torch.diag(whiten_scale) @ content_vectors.T
        colour = style_vectors @ torch.diag(colour_scale) @ style_vectors.T
        transferred = colour @ whiten @ content_flat + style_mean
        outputs.append(transferred.to(content.dtype).view_as(content))
    return torch.stack(outputs)


# ---------------------------------------------------------------------------------------------
# The model


class ArtFlow(StyleModel):
    """ArtFlow-AdaIN (or -WCT): the model contract of nstlab.models with a Glow as the whole network."""

    name = "artflow"
    # Why it cannot train under torchrun:
    single_process_only = "ActNorm initialises its weights from the first batch, which differs per rank"

    def __init__(self, cfg):
        super().__init__()
        block = cfg.baselines["artflow"]
        self.loss_weights = method_settings("artflow", "loss", block.loss, PAPER_LOSS_WEIGHTS)
        options = method_settings("artflow", "options", block.options, DEFAULT_OPTIONS)
        for name in ("blocks", "flows", "hidden"):
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"baselines.artflow.options.{name} = {value!r}: expected a whole number >= 1"
                )
        for name, choices in (("transfer", TRANSFERS), ("first_batch", FIRST_BATCH)):
            if options[name] not in choices:
                raise ConfigError(
                    f"baselines.artflow.options.{name} = {options[name]!r}: choose one of {', '.join(choices)}"
                )
        if options["first_batch"] == "init_only" and block.iterations < 2:
            raise ConfigError(
                f"baselines.artflow.iterations = {block.iterations}: the first only initialises ActNorm "
                "(options.first_batch: init_only), so nothing would train; give at least 2"
            )
        self.options = options
        self.multiple = 2 ** options["blocks"]  # each block halves H and W
        self.glow = Glow(options["blocks"], options["flows"], options["hidden"])
        self.loss_network = NormalisedVGG(cfg.backbone.adain_vgg, cfg.backbone.vgg_width, cfg.seed)

    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """content, style (B, 3, H, W) in [0, 1] (sizes may differ) -> (B, 3, H, W) like content.

        Pads H, W to a multiple of 2**blocks (reflect) and crops back. The flow always runs in fp32,
        also under autocast: its reverse must undo its forward to ~1e-5. alpha < 1 mixes the
        transferred latents with the content's own, α·z_cs + (1 − α)·z_c (AdaIN's trade-off in the
        flow's latent space); alpha 0 gives the content back, as the flow is invertible.
        """
        content, content_size = pad_to_multiple(content, self.multiple)
        style, _ = pad_to_multiple(style, self.multiple)
        with torch.autocast(content.device.type, enabled=False):
            content_latents = self.glow(content.float())  # first call ever: ActNorm initialises here
            style_latents = self.glow(style.float())
            if self.options["transfer"] == "adain":
                mixed = adain(content_latents, style_latents)  # glow_adain.py Glow._reverse
            else:
                mixed = wct(content_latents, style_latents)
            mixed = alpha * mixed + (1.0 - alpha) * content_latents if alpha != 1.0 else mixed
            output = self.glow.reverse(mixed)
        return crop_to(output, content_size)

    @torch.no_grad()
    def first_batch(self, content: torch.Tensor, style: torch.Tensor) -> bool:
        """The trainer's step 0 (see nstlab.models): with first_batch init_only, ArtFlow train.py's
        `if i == args.start_iter`: the flow runs on the content batch alone, ActNorm initialises
        from it, and nothing updates (True: the step is taken). "train": False, a normal step."""
        if self.options["first_batch"] != "init_only":
            return False
        with torch.autocast(content.device.type, enabled=False):
            self.glow(pad_to_multiple(content, self.multiple)[0].float())
        return True

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms of net.py Net.forward (weights 0 are skipped).

        content: MSE of relu4_1 against the content image's raw relu4_1 (not an AdaIN target);
        style: Σ relu1_1…relu4_1 of MSE(μ) + MSE(σ), σ = sqrt(unbiased var + 1e-5).
        """

        def encode(images: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.loss_network(images, last_layer=CONTENT_LAYER)  # net.py stops at relu4_1

        output_features = encode(self(content, style))
        terms = {}
        if self.loss_weights["content"]:
            content_feature = encode(content)[CONTENT_LAYER]
            terms["content"] = F.mse_loss(output_features[CONTENT_LAYER], content_feature)
        if self.loss_weights["style"]:
            terms["style"] = mean_std_style_loss(output_features, encode(style), STYLE_LAYERS)
        return terms

    def parameter_counts(self) -> dict[str, int]:
        return part_counts(self)
