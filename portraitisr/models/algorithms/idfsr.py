"""IDFSR ("IDFSR: Personalized Face Super-Resolution with Identity Decoupling and Fitting"): personalised face SR with
identity decoupling and fitting, on DiffAE's pixel-space UNet.

Stage 1, pretraining (section 3.1, Eq. 1)::

    L_sim = E || eps - eps_theta([x_t, I_M], t, z_s, z_id) ||^2,   z_s = E_s(I_W),   z_id = E_id(I_G)

``I_M`` is the LR (upscaled to the output size) with its facial region masked (:class:`FaceRegionMasker`), ``I_W``
a same-identity reference warped onto the LR face from landmarks (:class:`ReferenceWarper`), ``E_s`` DiffAE's
semantic encoder driving AdaGN, ``E_id`` a frozen face-recognition network whose embedding enters the UNet through
cross-attention (:class:`DiffAEUNet` with ``attention='identity'``). DDPM with T = 1000 and a linear beta schedule
(section 3.3; DiffAE's ``linear``: 1e-4 to 0.02 at T = 1000), the noise-prediction MSE; the UNet and the style
encoder start from DiffAE's FFHQ-256 weights.

Stage 2, identity fitting (section 3.3): everything frozen, ``z_id`` replaced by one learnable embedding initialised
from a reference and optimised on a few photos of the person under the same loss
(:class:`~portraitisr.models.algorithms.identity_fitting.IdentityFitter`, ``tools/fit_identity.py``).

Inference: DDIM with 20 steps (section 3.3) through diffusers' ``DDIMScheduler``, with DiffAE's sampler settings:
``leading`` spacing (timesteps 950, 900, ..., 0, DiffAE's ``ddim20``), ``alpha_bar_prev = 1`` after the last step,
``x_0`` clipped to [-1, 1] and the noise re-derived from the clipped ``x_0`` (``clip_denoised=True``), eta 0.

The identity at test time (``test_identity``): ``'reference'`` (the embedding of the reference photo: the
pretrained "PT" rows of Table 1), ``'fitted'`` (a fitted embedding: :meth:`IDFSR.set_identity`, or one file per
identity in ``identity_dir``; the "FT" rows), ``'lr'`` (appendix C, reference-free: the LR is its own reference for
both the style and the identity) or ``'gt'`` (an oracle, for analysis only). Without a reference the model falls
back to appendix C's reference-free mode.

The component analysis of section 5.4 is the switches ``lr_condition`` (``'masked'``, ``'full'``: the SR3-style
concatenation of case 1, ``'none'``), ``style_source`` (``'warped_reference'``, ``'lr'``: feature conditioning on
the LR as DiffAE does, case 3, ``'none'``: case 5) and ``identity_embedder=None`` (case 4).
"""
import os
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import Tensor, nn

from portraitisr.face.alignment.templates import FFHQ_512
from portraitisr.models.backbones.diffae_checkpoint import DiffAELoadReport, load_diffae_checkpoint
from portraitisr.models.backbones.diffae_unet import DiffAEUNet
from portraitisr.models.conditioning import identity_embedder as id_file
from portraitisr.models.conditioning.identity_cross_attention import IdentityCrossAttention
from portraitisr.registry import BACKBONES, MODELS
from portraitisr.weights import load_state_dict, resolve_file
from .one_step_restorer import pack_outputs

LR_CONDITIONS = ('masked', 'full', 'none')
STYLE_SOURCES = ('warped_reference', 'lr', 'none')
TEST_IDENTITIES = ('reference', 'fitted', 'lr', 'gt')


def diffae_schedulers(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                      sample_steps: int = 20, clip_sample: bool = True) -> tuple:
    """``(DDPMScheduler for q(x_t | x_0), DDIMScheduler for sampling)`` with DiffAE's linear schedule.

    DiffAE's ``get_named_beta_schedule('linear', T)`` is ``linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)``;
    ``beta_start``/``beta_end`` are the values at T = 1000 and are scaled the same way for another T.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    scale = 1000 / num_train_timesteps
    common = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start * scale, beta_end=beta_end * scale,
                  beta_schedule='linear', prediction_type='epsilon', clip_sample=clip_sample, clip_sample_range=1.0)
    train = DDPMScheduler(**common)
    sampler = DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0, timestep_spacing='leading')
    sampler.set_timesteps(sample_steps)
    return train, sampler


@MODELS.register_module()
class IDFSR(BaseModel):
    """IDFSR: masked LR + warped reference (style) + identity embedding -> a DDPM in pixel space.

    Args:
        unet: :class:`DiffAEUNet` keyword arguments (``type`` optional): ``in_channels`` 6 (3 with
            ``lr_condition='none'``), ``attention='identity'`` with an identity embedder (its ``id_channels`` the
            embedder's width), ``use_style`` iff ``style_source != 'none'``.
        identity_embedder: :class:`~portraitisr.models.conditioning.IdentityEmbedder` config (the frozen ``E_id``),
            or None (section 5.4 case 4: no identity embedding; the UNet keeps self-attention).
        warper: :class:`~portraitisr.models.conditioning.ReferenceWarper` config (``I_W``).
        masker: :class:`~portraitisr.models.conditioning.FaceRegionMasker` config (``I_M``).
        lr_condition / style_source: see the module docstring.
        test_identity: where the identity comes from in ``val``/``test``/``restore`` (module docstring).
        identity_dir: folder of fitted identities, ``<identity>.safetensors`` by the dataset's identity names
            (``test_identity='fitted'``).
        num_train_timesteps / beta_start / beta_end: DDPM (T = 1000, linear 1e-4 .. 0.02).
        sample_steps: DDIM steps at inference (20).
        eta: DDIM eta (0: deterministic given ``x_T``).
        init_weights: DiffAE checkpoint to start from (a weight spec: path, file name in ``$PORTRAITISR_HOME``, ...;
            see :func:`~portraitisr.models.backbones.diffae_checkpoint.load_diffae_checkpoint`), or None.
        init_use_ema: take DiffAE's ``ema_model.*`` weights (True) or ``model.*``.
        eval_seed: seed of ``x_T`` in evaluation (plus the first sample's index), so results repeat.
        data_preprocessor: default :class:`IDFSRDataPreprocessor`.
    """

    def __init__(self, unet: dict, identity_embedder: Optional[dict] = None, warper: Optional[dict] = None,
                 masker: Optional[dict] = None, lr_condition: str = 'masked', style_source: str = 'warped_reference',
                 test_identity: str = 'reference', identity_dir: Optional[str] = None,
                 num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 sample_steps: int = 20, eta: float = 0.0, init_weights=None, init_use_ema: bool = True,
                 eval_seed: int = 0, data_preprocessor: Union[dict, nn.Module, None] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if not isinstance(data_preprocessor, nn.Module):
            data_preprocessor = MODELS.build(data_preprocessor or dict(type='IDFSRDataPreprocessor'))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        for name, value, allowed in (('lr_condition', lr_condition, LR_CONDITIONS),
                                     ('style_source', style_source, STYLE_SOURCES),
                                     ('test_identity', test_identity, TEST_IDENTITIES)):
            if value not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {value!r}')
        self.unet: DiffAEUNet = BACKBONES.build(dict(unet, type=unet.get('type', 'DiffAEUNet')))
        self.identity_embedder = MODELS.build(identity_embedder) if identity_embedder is not None else None
        self.warper = MODELS.build(warper or dict(type='ReferenceWarper'))
        self.masker = MODELS.build(masker or dict(type='FaceRegionMasker'))
        self.lr_condition, self.style_source, self.test_identity = lr_condition, style_source, test_identity
        self._check_unet()
        self.identity_dir = identity_dir
        self.train_scheduler, self.sampler = diffae_schedulers(num_train_timesteps, beta_start, beta_end,
                                                               sample_steps)
        self.num_train_timesteps, self.sample_steps, self.eta = num_train_timesteps, sample_steps, float(eta)
        self.eval_seed = int(eval_seed)
        self._fitted: Optional[Tensor] = None  # set_identity(): not a parameter, never in a checkpoint
        self._identity_cache: Dict[str, Tensor] = {}
        self.init_report: Optional[DiffAELoadReport] = None
        if init_weights is not None:
            self.init_report = load_diffae_checkpoint(self.unet, init_weights, use_ema=init_use_ema)

    def _check_unet(self) -> None:
        unet = self.unet
        want_in = 3 if self.lr_condition == 'none' else 6
        problems = []
        if unet.in_channels != want_in:
            problems.append(f'unet.in_channels={unet.in_channels}, lr_condition={self.lr_condition!r} needs {want_in}')
        if unet.use_style != (self.style_source != 'none'):
            problems.append(f'unet.use_style={unet.use_style} with style_source={self.style_source!r}')
        if (unet.attention == 'identity') != (self.identity_embedder is not None):
            problems.append(f"unet.attention={unet.attention!r} with identity_embedder "
                            f"{'set' if self.identity_embedder is not None else 'None'} ('identity' needs one)")
        elif self.identity_embedder is not None and unet.id_channels != self.identity_embedder.embedding_dim:
            problems.append(f'unet.id_channels={unet.id_channels} but the identity embedder gives '
                            f'{self.identity_embedder.embedding_dim}-d embeddings')
        narrow = sorted({m.channels for m in unet.modules()
                         if isinstance(m, IdentityCrossAttention) and m.channels <= 32})
        if narrow:
            # one channel per GroupNorm group: the next GroupNorm removes the per-channel shift one identity token adds
            problems.append(f'identity cross-attention on {narrow[0]} channels has no effect (GroupNorm(min(32, C), C) '
                            'removes the per-channel shift a single identity token adds): give the attention levels '
                            'more than 32 channels')
        if problems:
            raise ValueError('IDFSR configuration mismatch: ' + '; '.join(problems))

    # ------------------------------------------------------------------------------------------------ conditions
    @property
    def _unet(self) -> DiffAEUNet:
        return getattr(self.unet, 'module', self.unet)  # unwrapped from a DDP wrapper

    @property
    def uses_identity(self) -> bool:
        return self.identity_embedder is not None

    @torch.no_grad()
    def conditions(self, inputs: Tensor, landmarks: Tensor, ref: Optional[Tensor] = None,
                   ref_landmarks: Optional[Tensor] = None) -> dict:
        """The image conditions, all ``B x 3 x H x W`` in [0, 1] (or None):

        ``lr`` the LR at the output size; ``masked_lr`` ``I_M`` (with ``mask`` ``B x 1 x H x W``); ``style_image`` the
        style encoder's input (``I_W``, or the LR in the reference-free / feature-conditioning modes).
        """
        out = dict(lr=inputs, masked_lr=None, mask=None, style_image=None, warped=None)
        if self.lr_condition == 'masked':
            out['masked_lr'], out['mask'] = self.masker(inputs, landmarks)
        elif self.lr_condition == 'full':
            out['masked_lr'] = inputs
        if self.style_source == 'warped_reference' and ref is not None:
            if ref_landmarks is None:
                raise ValueError('warping the reference needs ref_landmarks')
            out['warped'] = self.warper(ref, ref_landmarks, landmarks, tuple(inputs.shape[-2:])).clamp(0, 1)
            out['style_image'] = out['warped']
        elif self.style_source != 'none':  # 'lr', or appendix C (no reference): the LR is its own reference
            out['style_image'] = inputs
        return out

    @torch.no_grad()
    def embed_identity(self, images: Tensor, landmarks: Optional[Tensor]) -> Tensor:
        """``E_id``: ``B x D`` embeddings of faces (``landmarks`` in their pixels; None: already aligned crops)."""
        if self.identity_embedder is None:
            raise RuntimeError('this IDFSR has no identity embedder')
        return self.identity_embedder(images, landmarks)

    def predict_noise(self, x_t: Tensor, t: Tensor, masked_lr: Optional[Tensor], style: Optional[Tensor],
                      identity: Optional[Tensor], style_is_code: bool = False) -> Tensor:
        """``eps_theta([x_t, I_M], t, z_s, z_id)``; images in [-1, 1]; ``style`` an image (encoded inside the UNet's
        forward, so a DDP wrapper sees the encoder) or, with ``style_is_code``, a ready ``z_s``."""
        x = x_t if masked_lr is None else torch.cat([x_t, masked_lr], 1)
        kwargs = dict(identity=identity if self.uses_identity else None)
        if style is not None:
            kwargs['cond' if style_is_code else 'x_start'] = style
        return self.unet(x, t, **kwargs)

    def diffusion_loss(self, gt: Tensor, cond: dict, identity: Optional[Tensor], t: Optional[Tensor] = None,
                       noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Per-sample ``mean((eps - eps_theta)^2)`` (Eq. 1), ``(B,)``; ``t`` uniform in ``[0, T)`` and ``noise``
        standard normal unless given (drawn from ``generator``, else torch's global generator)."""
        b = gt.shape[0]
        if t is None:
            t = torch.randint(0, self.num_train_timesteps, (b, ), generator=generator, device='cpu').to(gt.device)
        if noise is None:
            noise = torch.randn(gt.shape, generator=generator, device='cpu', dtype=gt.dtype).to(gt.device)
        x0 = gt * 2 - 1
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        masked = cond['masked_lr'] * 2 - 1 if cond['masked_lr'] is not None else None
        style = cond['style_image'] * 2 - 1 if cond['style_image'] is not None else None
        eps = self.predict_noise(x_t, t, masked, style, identity)
        return F.mse_loss(eps.float(), noise.float(), reduction='none').mean(dim=(1, 2, 3))

    def loss(self, inputs: Tensor, gt: Tensor, face_landmarks: Tensor, ref: Optional[Tensor] = None,
             ref_landmarks: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Pretraining loss: ``z_id`` from the GT (section 3.1), ``z_s`` from the warped reference."""
        cond = self.conditions(inputs, face_landmarks, ref, ref_landmarks)
        identity = self.embed_identity(gt, face_landmarks) if self.uses_identity else None
        return dict(loss_diffusion=self.diffusion_loss(gt, cond, identity).mean())

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, cond: dict, identity: Optional[Tensor], generator: Optional[torch.Generator] = None,
               x_T: Optional[Tensor] = None) -> Tensor:
        """DDIM (``sample_steps``) from ``x_T`` (standard normal from ``generator`` unless given) -> ``B x 3 x H x W``
        in [0, 1]."""
        lr = cond['lr']
        if x_T is None:
            x_T = torch.randn(lr.shape, generator=generator, device='cpu', dtype=torch.float32)
        x = x_T.to(lr.device, torch.float32)
        masked = cond['masked_lr'] * 2 - 1 if cond['masked_lr'] is not None else None
        z_s = self._unet.encode(cond['style_image'] * 2 - 1) if cond['style_image'] is not None else None
        for t in self.sampler.timesteps:
            eps = self.predict_noise(x, t.repeat(x.shape[0]).to(x.device), masked, z_s, identity, style_is_code=True)
            x = self.sampler.step(eps.float(), t, x, eta=self.eta, use_clipped_model_output=True,
                                  generator=generator).prev_sample
        return ((x + 1) / 2).clamp(0, 1)

    def load_checkpoint(self, checkpoint: Union[str, os.PathLike, dict]) -> None:
        """Load a training checkpoint of this library (``work_dir/iter_N.pth``, trainable tensors under
        ``state_dict``) or a bare state dict, as a file (a weight spec) or already loaded: every UNet tensor must be
        in it and nothing unknown; the frozen identity network keeps the weights its config gave it."""

        given = isinstance(checkpoint, dict)
        loaded = checkpoint if given else load_state_dict(resolve_file(checkpoint))
        source = 'the given state dict' if given else f'checkpoint {checkpoint}'
        state = loaded.get('state_dict', loaded)
        state = {k.replace('.module.', '.').removeprefix('module.'): v for k, v in state.items()}
        own = self.state_dict()
        unexpected = sorted(set(state) - set(own))
        missing = sorted(k for k in own if k.startswith('unet.') and k not in state)
        if unexpected or missing:
            raise KeyError(f'{source} does not fit this IDFSR config: {len(missing)} UNet tensors '
                           f'missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})')
        self.load_state_dict(state, strict=False)

    # ------------------------------------------------------------------------------------------------ identity
    def set_identity(self, identity: Union[Tensor, str, os.PathLike, None]) -> None:
        """Use a fitted identity (a ``D``/``N x D`` tensor or a file of ``tools/fit_identity.py``) for every image
        from now on (``restore``, ``val``, ``test``), whatever ``test_identity`` says; None goes back to it."""
        if identity is not None and not isinstance(identity, Tensor):
            identity, _ = id_file.load_identity_embedding(identity)
        if identity is not None:
            if not self.uses_identity:
                raise ValueError('this IDFSR has no identity embedding (built without an identity embedder)')
            if identity.shape[-1] != self._unet.id_channels:
                raise ValueError(f'the identity has {identity.shape[-1]} channels, the model takes '
                                 f'{self._unet.id_channels}')
        self._fitted = identity

    def _identity_from_dir(self, names: List[Optional[str]], device) -> Tensor:
        if self.identity_dir is None:
            raise ValueError("test_identity='fitted' needs identity_dir (or set_identity())")
        out = []
        for name in names:
            if name is None:
                raise KeyError("test_identity='fitted' needs metainfo['identity'] to find the fitted embedding")
            if name not in self._identity_cache:
                path = os.path.join(self.identity_dir, f'{name}.safetensors')
                if not os.path.isfile(path):
                    raise FileNotFoundError(f'no fitted identity {path}: run tools/fit_identity.py for {name!r}')
                self._identity_cache[name] = id_file.load_identity_embedding(path)[0]
            out.append(self._identity_cache[name])
        return torch.stack(out).to(device)

    def test_time_identity(self, cond: dict, gt: Optional[Tensor], landmarks: Tensor, ref: Optional[Tensor],
                           ref_landmarks: Optional[Tensor], names: Optional[List[Optional[str]]] = None,
                           identity: Optional[Tensor] = None) -> Optional[Tensor]:
        """The ``B x D`` (or ``B x N x D``) identity used at test time (see ``test_identity``)."""
        if not self.uses_identity:
            return None
        b, device = cond['lr'].shape[0], cond['lr'].device
        if identity is None:
            identity = self._fitted
        if identity is not None:
            identity = identity.to(device, torch.float32)
            return identity.expand(b, *identity.shape) if identity.dim() == 1 or \
                (identity.dim() == 2 and identity.shape[0] != b) else identity
        mode = self.test_identity
        if mode == 'fitted':
            return self._identity_from_dir(names or [None] * b, device)
        if mode == 'gt':
            if gt is None:
                raise ValueError("test_identity='gt' needs the ground truth")
            return self.embed_identity(gt, landmarks)
        if mode == 'reference' and ref is not None:
            return self.embed_identity(ref, ref_landmarks)
        return self.embed_identity(cond['lr'], landmarks)  # 'lr', or no reference: appendix C

    @torch.no_grad()
    def restore(self, inputs: Tensor, ref: Optional[Tensor] = None, landmarks: Optional[Tensor] = None,
                ref_landmarks: Optional[Tensor] = None, identity: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None, gt: Optional[Tensor] = None,
                names: Optional[List[Optional[str]]] = None) -> Tensor:
        """Restore LR faces upscaled to the model's size (``B x 3 x S x S`` in [0, 1]) -> ``B x 3 x S x S`` in [0, 1].

        Args:
            inputs: the LR, bicubic-upscaled to the output size.
            ref: same-identity reference faces ``B x 3 x H x W`` in [0, 1], or None (appendix C, reference-free).
            landmarks / ref_landmarks: ``B x 5 x 2`` landmarks in pixels of ``inputs`` / ``ref``; None means the image
                is an FFHQ-aligned crop (landmarks = the FFHQ template at its size).
            identity: ``D`` / ``B x D`` identity embedding (e.g. fitted), overriding ``test_identity``.
            generator: the source of ``x_T`` (default: seeded with ``eval_seed``).
        """
        if inputs.dim() != 4 or inputs.shape[1] != 3:
            raise ValueError(f'IDFSR restores B x 3 x S x S faces, got {tuple(inputs.shape)}')
        landmarks = self._template_landmarks(inputs) if landmarks is None else landmarks.to(inputs)
        if ref is not None and ref_landmarks is None:
            ref_landmarks = self._template_landmarks(ref)
        if generator is None:
            generator = torch.Generator().manual_seed(self.eval_seed)
        cond = self.conditions(inputs, landmarks, ref, ref_landmarks)
        z_id = self.test_time_identity(cond, gt, landmarks, ref, ref_landmarks, names, identity)
        return self.sample(cond, z_id, generator)

    @staticmethod
    def _template_landmarks(images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        points = torch.as_tensor(FFHQ_512, dtype=torch.float32, device=images.device)
        # pixel-centre scaling of the 512 template to the image
        points = (points + 0.5) * torch.tensor([w / 512, h / 512], device=images.device) - 0.5
        return points.expand(images.shape[0], 5, 2)

    # ------------------------------------------------------------------------------------------------ runner API
    def forward(self, inputs: Tensor, gt: Optional[Tensor] = None, metainfo: Optional[List[dict]] = None,
                ref: Optional[Tensor] = None, face_landmarks: Optional[Tensor] = None,
                ref_landmarks: Optional[Tensor] = None, identity: Optional[List[Optional[str]]] = None,
                mode: str = 'tensor'):
        """``mode='loss'``: dict of losses (needs ``gt``); ``'tensor'``/``'predict'``: restored images."""
        if mode == 'loss':
            if gt is None or face_landmarks is None:
                raise ValueError('IDFSR training needs `gt` and `face_landmarks`')
            return self.loss(inputs, gt, face_landmarks, ref, ref_landmarks)
        if mode in ('tensor', 'predict'):
            return self.restore(inputs, ref, face_landmarks, ref_landmarks, gt=gt, names=identity)
        raise ValueError(f'unknown mode {mode!r}; use "loss", "tensor" or "predict"')

    def _predict(self, data: dict) -> List[dict]:
        first = int(data['metainfo'][0].get('index', 0)) if data['metainfo'] else 0
        generator = torch.Generator().manual_seed(self.eval_seed + first)
        sr = self.restore(data['inputs'], data.get('ref'), data['face_landmarks'], data.get('ref_landmarks'),
                          generator=generator, gt=data.get('gt'), names=data.get('identity'))
        return pack_outputs(sr, data)

    def val_step(self, data: Union[dict, tuple, list]) -> List[dict]:
        return self._predict(self.data_preprocessor(data, False))

    def test_step(self, data: Union[dict, tuple, list]) -> List[dict]:
        return self._predict(self.data_preprocessor(data, False))
