"""GAN objectives for HeadsUp's face adversarial loss ``L_F^adv`` (HeadsUp, arXiv 2510.09924, Eq. 2).

The paper does not say which GAN objective it uses; the options below are ours to pick from in
a config (see :class:`~portraitisr.models.discriminators.FacePatchDiscriminator` for the D).
"""
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import LOSSES

_GAN_TYPES = ('vanilla', 'lsgan', 'hinge', 'softplus')


@LOSSES.register_module()
class GANLoss(nn.Module):
    """Generator and discriminator losses on discriminator logits.

    With ``x`` the logits and the mean taken over every element:

    ============  ==============================  ==============================  =================
    gan_type      D, target real                  D, target fake                  G (target real)
    ============  ==============================  ==============================  =================
    ``vanilla``   BCE(x, 1) = softplus(-x)        BCE(x, 0) = softplus(x)         softplus(-x)
    ``lsgan``     (x - 1)^2                       x^2                             (x - 1)^2
    ``hinge``     relu(1 - x)                     relu(1 + x)                     -x
    ``softplus``  softplus(-x)                    softplus(x)                     softplus(-x)
    ============  ==============================  ==============================  =================

    ``softplus`` is StyleGAN2's non-saturating logistic loss. It is the same function as
    ``vanilla`` (binary cross-entropy on logits with the generator aiming at "real"), written
    out directly; both names exist so configs can say which convention they follow.
    For ``hinge`` the generator uses ``-x`` (``+x`` if asked for the fake target), as in SNGAN.

    ``loss_weight`` scales the generator loss only (``is_disc=False``), as BasicSR does: it is the
    lambda^adv that balances the adversarial term against the other generator losses, while the
    discriminator is trained on its loss alone.

    Args:
        gan_type: one of ``'vanilla'``, ``'lsgan'``, ``'hinge'``, ``'softplus'``.
        loss_weight: lambda^adv, applied to the generator side.

    ``forward(logits, target_is_real, is_disc=False)``: logits of any shape (e.g. the
    ``N x 1 x h' x w'`` PatchGAN map) -> scalar mean in float32. Empty logits (no face in the
    batch) give a zero that keeps the graph.
    """

    def __init__(self, gan_type: str = 'vanilla', loss_weight: float = 1.0) -> None:
        super().__init__()
        if gan_type not in _GAN_TYPES:
            raise ValueError(f'gan_type must be one of {_GAN_TYPES}, got {gan_type!r}')
        self.gan_type, self.loss_weight = gan_type, loss_weight

    def forward(self, logits: Tensor, target_is_real: bool, is_disc: bool = False) -> Tensor:
        if logits.numel() == 0:
            return logits.sum() * 0
        # float32 so that under autocast the softplus / squares of large logits do not overflow.
        x = logits.float()
        if self.gan_type in ('vanilla', 'softplus'):
            # softplus(-x) = -log sigmoid(x), softplus(x) = -log(1 - sigmoid(x)): BCE on logits.
            loss = F.softplus(-x if target_is_real else x).mean()
        elif self.gan_type == 'lsgan':
            loss = ((x - 1)**2 if target_is_real else x**2).mean()
        elif is_disc:  # hinge, discriminator: a margin of 1 on each side
            loss = F.relu(1 - x if target_is_real else 1 + x).mean()
        else:  # hinge, generator: raise the score of its samples without a margin
            loss = -x.mean() if target_is_real else x.mean()
        return loss if is_disc else self.loss_weight * loss

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        """Weighted adversarial loss of the generator: D should take its samples for real."""
        return self(fake_logits, target_is_real=True, is_disc=False)

    def discriminator_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """Unweighted ``loss(real -> real) + loss(fake -> fake)`` (summed, as StyleGAN2; pix2pix halves it).

        ``fake_logits`` must come from detached generator outputs, or the generator receives
        gradients of the discriminator's objective.
        """
        return (self(real_logits, target_is_real=True, is_disc=True)
                + self(fake_logits, target_is_real=False, is_disc=True))

    def extra_repr(self) -> str:
        return f'gan_type={self.gan_type!r}, loss_weight={self.loss_weight}'
