"""Recipe noise: multires (pyramid) noise and input-perturbation noise, as sd-scripts applies them.

Sources: sd-scripts ``library/custom_train_functions.py`` (``pyramid_noise_like``, after Whitaker 2023,
"Multi-Resolution Noise for Diffusion Model Training") and ``library/train_util.py``
(``get_noise_noisy_latents_and_timesteps``: ``add_noise(latents, noise + γ·randn, t)`` for ``--ip_noise_gamma``,
after Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion Models"). Random draws use the
global torch RNG only (sd-scripts draws the scale from python's ``random``), so checkpoints restore them exactly.
"""

from __future__ import annotations

import torch


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float) -> torch.Tensor:
    """Add ``iterations`` upsampled coarser noise levels to (B, C, H, W) ``noise``, then rescale to unit std.

    Level i is drawn at ``1/rⁱ`` of the size (r uniform in [2, 4), as sd-scripts) and weighted ``discountⁱ``;
    the low spatial frequencies get extra energy, which lets the model change large areas (contrast, lighting).
    """
    b, c, h, w = noise.shape
    upsample = torch.nn.Upsample(size=(h, w), mode="bilinear")
    out = noise.clone()
    for i in range(iterations):
        r = float(torch.rand(())) * 2 + 2
        hn, wn = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        coarse = torch.randn(b, c, hn, wn, dtype=noise.dtype).to(noise.device)
        out = out + upsample(coarse) * discount**i
        if hn == 1 or wn == 1:
            break  # the coarsest level is one value per channel
    return out / out.std()


def perturbed_input_noise(noise: torch.Tensor, gamma: float) -> torch.Tensor:
    """The noise the latents are noised with under input perturbation: ``ε + γ·ε'`` (the target stays ``ε``)."""
    if not gamma:
        return noise
    return noise + gamma * torch.randn_like(noise)
