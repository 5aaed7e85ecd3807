"""HeadsUp: one-step portrait super-resolution with face-aware losses and an optional reference face.

HeadsUp (*HeadsUp! High-Fidelity Portrait Image Super-Resolution*, arXiv 2510.09924), sections 2.2-2.3 and
appendix B:

- Generator ``G = (E~, eps~, D)``: the OSEDiff backbone (LoRA on the VAE encoder and the UNet) whose
  ``conv_in`` takes 9 channels: the LQ latent, the latent of the aligned reference face ``x_r`` (encoded by
  the same LoRA encoder) and the binary face mask ``M`` at latent resolution; the 5 new channels start at
  zero, so at initialisation HeadsUp computes exactly what OSEDiff does.
- Without a reference (or when it is dropped, probability 0.2 in training) ``x_r = 0`` and ``M = 0``.
- Losses: OSEDiff's MSE + LPIPS + VSD on the whole image, plus on the face aligned from the GT
  landmarks (``Omega``, a differentiable kornia warp): face fidelity (Eq. 3, weight 1), the
  reference-aware identity loss (Eq. 4-5, weight 4) and a face adversarial loss with its own
  discriminator and optimiser. Images without a face contribute only the whole-image terms.
"""
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.optim import OptimWrapperDict
from torch import Tensor

from portraitisr.face.alignment.face_aligner import invert_affine
from portraitisr.face.detection import build_default_face_detector
from portraitisr.registry import FACE_ALIGNERS, FACE_DETECTORS, LOSSES, MODELS
from .osediff import OSEDIFF_NEGATIVE_PROMPT, OSEDiff

REF_PLACEMENTS = ('resize', 'paste')


@contextmanager
def _frozen(module: torch.nn.Module):
    """Parameters of ``module`` need no gradient inside the block (the generator's adversarial
    loss must not leave gradients on the discriminator); restores each flag afterwards."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@MODELS.register_module()
class HeadsUp(OSEDiff):
    """HeadsUp training and inference (with or without a reference face).

    Args:
        backbone: ``OneStepSD`` config with ``in_channels=9``.
        text_encoder / regularizer / prompter / lpips_loss / l2_weight / vsd_weight /
            regularizer_weight / negative_prompt / color_fix / eval_seed: see :class:`OSEDiff`
            ("the rest weights are derived from OSEDiff", paper section 4.1).
        face_aligner: ``FACE_ALIGNERS`` config of ``Omega``: the FFHQ-512 template with the LMEDS
            estimate of ``cv2.estimateAffinePartial2D`` (appendix B), warping with kornia.
        face_fidelity_loss: ``LOSSES`` config of Eq. 3 (``lambda_fid = 1``, ``lambda_LPIPS = 0.8``),
            or None (Table 4 ablations).
        identity_loss: ``LOSSES`` config of Eq. 4-5 (``lambda_id = 4``; CVLFace in the paper, any
            registered identity extractor here), or None.
        identity_aligner: ``FACE_ALIGNERS`` config of the crops the identity network sees (the
            ArcFace 112 template, which recognition networks are trained on), taken from the same
            landmarks; None feeds it ``Omega``'s crops, resized.
        discriminator: ``MODELS`` config of the face discriminator (trained by its own optimiser,
            ``optim_wrapper['discriminator']``), or None for no adversarial term.
        adversarial_loss: ``LOSSES`` config of the GAN loss (weight = ``lambda_adv``; the paper
            does not state it); required with ``discriminator``.
        ref_dropout: probability of dropping an available reference in training (0.2, appendix B).
        ref_placement: how the aligned reference ``x_r`` (``S x S``) is brought to the LQ size before
            encoding, so its latent can be concatenated with the LQ latent (the paper does not say):
            ``'resize'`` (the whole aligned face scaled by one factor in x and y to the largest size that
            fits the LQ, centred, zeros on the two bands of a non-square LQ; on the paper's square 1024
            crops it is a plain resize) or ``'paste'`` (warped back onto the face's location in the LQ,
            zeros elsewhere, so reference and mask are spatially aligned). Neither stretches the face.
        use_reference_at_test: condition on the dataset's references in ``val_step``/``test_step``.
        face_detector: ``FACE_DETECTORS`` config used at inference to locate the face for the mask
            when a reference comes without landmarks (default: the best detector available offline).
        facial_loss: optional AuthFace facial loss, see :class:`OneStepRestorer`.
    """

    def __init__(self,
                 backbone: dict,
                 text_encoder: dict,
                 regularizer: Optional[dict] = None,
                 prompter: Optional[dict] = None,
                 lpips_loss: Optional[dict] = None,
                 face_aligner: Optional[dict] = None,
                 face_fidelity_loss: Optional[dict] = None,
                 identity_loss: Optional[dict] = None,
                 identity_aligner: Optional[dict] = None,
                 discriminator: Optional[dict] = None,
                 adversarial_loss: Optional[dict] = None,
                 ref_dropout: float = 0.2,
                 ref_placement: str = 'resize',
                 use_reference_at_test: bool = True,
                 face_detector: Optional[dict] = None,
                 l2_weight: float = 1.0,
                 vsd_weight: float = 1.0,
                 regularizer_weight: float = 1.0,
                 negative_prompt: str = OSEDIFF_NEGATIVE_PROMPT,
                 color_fix: Optional[str] = 'adain',
                 eval_seed: int = 0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 facial_loss: Optional[dict] = None) -> None:
        super().__init__(backbone=backbone, text_encoder=text_encoder, regularizer=regularizer,
                         prompter=prompter, lpips_loss=lpips_loss, l2_weight=l2_weight,
                         vsd_weight=vsd_weight, regularizer_weight=regularizer_weight,
                         negative_prompt=negative_prompt, color_fix=color_fix, eval_seed=eval_seed,
                         data_preprocessor=data_preprocessor or dict(type='PortraitDataPreprocessor'),
                         init_cfg=init_cfg, facial_loss=facial_loss)
        if self._backbone.in_channels != 9:
            raise ValueError(f'HeadsUp needs a backbone with in_channels=9 (LQ latent 4 + reference latent 4 + '
                             f'face mask 1), got {self._backbone.in_channels}')
        if not 0 <= ref_dropout <= 1:
            raise ValueError(f'ref_dropout must be a probability, got {ref_dropout}')
        if ref_placement not in REF_PLACEMENTS:
            raise ValueError(f'ref_placement must be one of {REF_PLACEMENTS}, got {ref_placement!r}')
        if (discriminator is None) != (adversarial_loss is None):
            raise ValueError('`discriminator` and `adversarial_loss` go together: give both or neither')
        self.face_aligner = FACE_ALIGNERS.build(face_aligner or dict(type='FaceAligner', template='ffhq512'))
        self.identity_aligner = FACE_ALIGNERS.build(identity_aligner) if identity_aligner else None
        self.face_fidelity_loss = LOSSES.build(face_fidelity_loss) if face_fidelity_loss else None
        self.identity_loss = LOSSES.build(identity_loss) if identity_loss else None
        self.discriminator = MODELS.build(discriminator) if discriminator else None
        self.adversarial_loss = LOSSES.build(adversarial_loss) if adversarial_loss else None
        self.ref_dropout = float(ref_dropout)
        self.ref_placement = ref_placement
        self.use_reference_at_test = use_reference_at_test
        self.face_detector_cfg = face_detector
        self._face_detector = None

    @property
    def _discriminator(self):
        return getattr(self.discriminator, 'module', self.discriminator)

    # ------------------------------------------------------------------ conditions
    def reference_condition(self, size: Tuple[int, int], ref: Optional[Tensor], has_ref: Tensor,
                            matrices: Optional[Tensor]) -> Tuple[Optional[Tensor], Tensor]:
        """The backbone's reference image at the LQ size and the face mask at latent resolution.

        Args:
            size: ``(H, W)`` of the (padded) LQ.
            ref: ``B x 3 x S x S`` aligned reference faces in [0, 1] (any content where ``has_ref``
                is False) or None.
            has_ref: ``(B,)`` bool, the images conditioned on their reference.
            matrices: ``B x 2 x 3`` image -> ``Omega``-crop matrices of each image's face (rows
                where ``has_ref`` is False are ignored); needed whenever a reference is used.

        Returns:
            ``(ref_image B x 3 x H x W or None, face_mask B x 1 x H/8 x W/8 in {0, 1})``.
        """
        factor = self._backbone.vae_downscale
        batch = has_ref.shape[0]
        mask = torch.zeros(batch, 1, size[0] // factor, size[1] // factor, device=has_ref.device)
        if ref is None or not bool(has_ref.any()):
            return None, mask
        if matrices is None:
            raise ValueError('a reference face needs the location of its face in the LQ (landmarks)')
        index = has_ref.nonzero()[:, 0]
        mask[index] = self.face_aligner.region_mask(matrices[index].to(has_ref.device), mask.shape[-2:],
                                                    scale=1 / factor).to(mask.dtype)
        if self.ref_placement == 'resize':
            ref_image = self._resize_reference(ref.float(), size)
        else:
            ref_image = self._paste_reference(ref.float(), matrices.to(ref.device), size)
        return ref_image * has_ref.to(ref_image.dtype).reshape(-1, 1, 1, 1), mask

    @staticmethod
    def _resize_reference(ref: Tensor, size: Tuple[int, int]) -> Tensor:
        """``B x 3 x h x w`` -> ``B x 3 x H x W``: the reference scaled by one factor for both axes (so a face keeps
        its proportions on any aspect ratio) to the largest size that fits, centred, zeros elsewhere. An
        ``S x S`` reference on a square LQ is a plain resize."""
        height, width = size
        factor = min(height / ref.shape[-2], width / ref.shape[-1])
        new_h = min(height, max(1, round(ref.shape[-2] * factor)))
        new_w = min(width, max(1, round(ref.shape[-1] * factor)))
        scaled = F.interpolate(ref, size=(new_h, new_w), mode='bicubic', align_corners=False,
                               antialias=True).clamp(0, 1)
        if (new_h, new_w) == (height, width):
            return scaled
        top, left = (height - new_h) // 2, (width - new_w) // 2
        return F.pad(scaled, (left, width - new_w - left, top, height - new_h - top))

    def _paste_reference(self, ref: Tensor, matrices: Tensor, size: Tuple[int, int]) -> Tensor:
        """Warp each ``S x S`` aligned reference back onto its face's place in an ``H x W`` image."""
        from kornia.geometry.transform import warp_affine

        crop_h, crop_w = self.face_aligner.crop_size
        scale = torch.tensor([[ref.shape[-1] / crop_w], [ref.shape[-2] / crop_h]], dtype=torch.float64,
                             device=ref.device)
        to_ref = matrices.to(torch.float64) * scale  # image -> reference-crop pixels
        inverse = invert_affine(to_ref).to(ref.dtype)
        return warp_affine(ref, inverse, dsize=tuple(size), mode='bilinear', padding_mode='zeros',
                           align_corners=True)

    def face_matrices(self, landmarks: Tensor, rows: Tensor) -> Tensor:
        """``B x 2 x 3`` image -> ``Omega``-crop matrices for the ``rows`` (``(B,)`` bool) that have
        a face; zeros elsewhere (never used)."""
        matrices = landmarks.new_zeros(landmarks.shape[0], 2, 3, dtype=torch.float32)
        if bool(rows.any()):
            matrices[rows] = self.face_aligner.estimate(landmarks[rows].float()).float()
        return matrices

    def face_detector(self):
        """The detector that locates faces at inference (built on first use)."""
        if self._face_detector is None:
            if self.face_detector_cfg is not None:
                self._face_detector = FACE_DETECTORS.build(self.face_detector_cfg)
            else:

                self._face_detector = build_default_face_detector()
        return self._face_detector

    def detect_landmarks(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Landmarks of the largest face of each image: ``(B x 5 x 2, (B,) bool has_face)``.

        Runs in a forked CPU random state: the detector is built lazily on first use, and its construction must
        not shift the draws of the VAE posterior that follow (a first restore with a reference would otherwise
        differ from every later one).
        """
        landmarks = torch.zeros(images.shape[0], 5, 2, device=images.device)
        has_face = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        with torch.random.fork_rng(devices=[]):
            detections = self.face_detector().detect(images.detach().float().cpu())
        for i, found in enumerate(detections):
            if len(found):
                areas = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
                landmarks[i] = torch.from_numpy(found.landmarks[int(areas.argmax())]).to(images.device)
                has_face[i] = True
        return landmarks, has_face

    def prepare_conditions(self, padded_lq: Tensor, ref: Optional[Tensor] = None,
                           face_landmarks: Optional[Tensor] = None, has_ref: Optional[Tensor] = None,
                           has_face: Optional[Tensor] = None) -> dict:
        """Backbone inputs for an inference batch; see :meth:`restore`."""
        batch = padded_lq.shape[0]
        device = padded_lq.device
        if ref is None:
            return {}
        if ref.dim() == 3:
            ref = ref[None]
        if ref.shape[0] != batch or ref.shape[1] != 3:
            raise ValueError(f'ref must be B x 3 x S x S for {batch} images, got {tuple(ref.shape)}')
        has_ref = (torch.ones(batch, dtype=torch.bool, device=device) if has_ref is None
                   else has_ref.to(device=device, dtype=torch.bool))
        if face_landmarks is None:
            face_landmarks, has_face = self.detect_landmarks(padded_lq)
        elif has_face is None:
            has_face = torch.ones(batch, dtype=torch.bool, device=device)
        lost = has_ref & ~has_face.to(device)
        if bool(lost.any()):
            print_log(f'{int(lost.sum())} image(s) came with a reference but no face was found: restored '
                      'without the reference', logger='current', level=30)
        has_ref = has_ref & has_face.to(device)
        matrices = self.face_matrices(face_landmarks.to(device), has_ref)
        ref_image, mask = self.reference_condition(padded_lq.shape[-2:], ref.to(device), has_ref, matrices)
        return dict(ref=ref_image, face_mask=mask, has_ref=has_ref)

    def restore(self, lq: Tensor, metainfo: Optional[List[dict]] = None, ref: Optional[Tensor] = None,
                face_landmarks: Optional[Tensor] = None, has_ref: Optional[Tensor] = None,
                has_face: Optional[Tensor] = None) -> Tensor:
        """Restore ``lq`` (``B x 3 x H x W`` in [0, 1], at the output size), with or without a reference.

        Args:
            ref: aligned reference faces ``B x 3 x S x S`` in [0, 1] (FFHQ template, as the
                dataset builder writes them), or None for no reference.
            face_landmarks: ``B x 5 x 2`` landmarks (pixels of ``lq``) of the face each reference
                belongs to; detected (largest face) when None.
            has_ref / has_face: optional ``(B,)`` bools for batches where only some images have them.
        """
        return super().restore(lq, metainfo, ref=ref, face_landmarks=face_landmarks, has_ref=has_ref,
                               has_face=has_face)

    def restore_batch(self, data: dict) -> Tensor:
        if not self.use_reference_at_test or data.get('ref') is None:
            return self.restore(data['inputs'], data['metainfo'])
        return self.restore(data['inputs'], data['metainfo'], ref=data['ref'], face_landmarks=data['face_landmarks'],
                            has_ref=data['has_ref'], has_face=data['has_face'])

    # ------------------------------------------------------------------ training
    def drop_references(self, has_ref: Tensor) -> Tensor:
        """Keep each available reference with probability ``1 - ref_dropout`` (appendix B).

        Drawn from torch's CPU generator, which mmengine seeds per rank and the random-state hook
        checkpoints, so a resumed run drops the same references."""
        keep = torch.rand(has_ref.shape[0]) >= self.ref_dropout
        return has_ref & keep.to(has_ref.device)

    def align_faces(self, images: Tensor, matrices: Tensor, image_index: Tensor,
                    aligner=None) -> Tensor:
        """``N x 3 x h x w`` faces warped out of ``images`` (differentiable w.r.t. ``images``)."""
        return (aligner or self.face_aligner).align(images, matrices, image_index)

    def face_losses(self, sr: Tensor, gt: Tensor, landmarks: Tensor, has_face: Tensor,
                    ref: Optional[Tensor], has_ref: Tensor,
                    matrices: Optional[Tensor] = None) -> Tuple[Dict[str, Tensor], Tensor, Tensor]:
        """The face terms of Eq. 2 on the faces located by the GT ``landmarks``.

        Returns ``(losses, pred_faces, gt_faces)``; the faces (``Omega`` crops) feed the
        discriminator step.
        """
        index = has_face.nonzero()[:, 0]
        # image -> Omega-crop matrices of the faces (from :meth:`face_matrices` when the caller has them)
        matrices = (self.face_matrices(landmarks, has_face) if matrices is None else matrices)[index]
        pred_faces = self.align_faces(sr, matrices, index)
        gt_faces = self.align_faces(gt, matrices, index)
        losses: Dict[str, Tensor] = {}
        if self.face_fidelity_loss is not None:
            losses['loss_face_fid'] = self.face_fidelity_loss(pred_faces, gt_faces)
        if self.identity_loss is not None:
            losses['loss_face_id'] = self._identity_term(sr, gt, landmarks[index], index, pred_faces, gt_faces,
                                                         ref, has_ref)
        if self.discriminator is not None:
            with _frozen(self._discriminator):
                # the unwrapped module: this pass trains the generator, not the discriminator
                fake_logits = self._discriminator(pred_faces)
            losses['loss_face_adv'] = self.adversarial_loss.generator_loss(fake_logits)
        return losses, pred_faces, gt_faces

    def _identity_term(self, sr, gt, landmarks, index, pred_faces, gt_faces, ref, has_ref) -> Tensor:
        face_has_ref = has_ref[index]
        ref_faces = None
        if ref is not None and bool(face_has_ref.any()):
            ref_faces = ref[index].float()
        if self.identity_aligner is None:
            if ref_faces is not None and ref_faces.shape[-2:] != pred_faces.shape[-2:]:
                ref_faces = F.interpolate(ref_faces, size=pred_faces.shape[-2:], mode='bilinear',
                                          align_corners=False, antialias=True)
            return self.identity_loss(pred_faces, gt_faces, ref_faces, face_has_ref)
        matrices = self.identity_aligner.estimate(landmarks.float())
        pred_id = self.align_faces(sr, matrices, index, self.identity_aligner)
        gt_id = self.align_faces(gt, matrices, index, self.identity_aligner)
        ref_id = None
        if ref_faces is not None:
            # the reference is aligned to the Omega template: its landmarks are that template's points
            crop_h, crop_w = self.face_aligner.crop_size
            template = self.face_aligner.template(dtype=torch.float32, device=ref_faces.device)
            template = template * torch.tensor([ref_faces.shape[-1] / crop_w, ref_faces.shape[-2] / crop_h],
                                               device=ref_faces.device)
            ref_matrices = self.identity_aligner.estimate(template[None].expand(ref_faces.shape[0], -1, -1))
            ref_id = self.identity_aligner.align(ref_faces, ref_matrices)
        return self.identity_loss(pred_id, gt_id, ref_id, face_has_ref)

    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> Dict[str, Tensor]:
        data = self.data_preprocessor(data, True)
        lq, gt, metainfo = data['inputs'], data['gt'], data['metainfo']
        landmarks, has_face = data['face_landmarks'], data['has_face']
        ref = data['ref']
        # a reference needs its face located in the image (for the mask), and survives dropout
        has_ref = self.drop_references(data['has_ref'] & has_face)
        matrices = self.face_matrices(landmarks, has_face)  # once per step: the mask and the face losses
        ref_image, face_mask = self.reference_condition(lq.shape[-2:], ref, has_ref, matrices)

        prompt_images = gt if self.prompter.use_gt_in_training else lq
        embeds = self.prompt_embeddings(prompt_images, metainfo)
        generator_wrapper = optim_wrapper['backbone']
        with generator_wrapper.optim_context(self.backbone):
            sr, latents = self.backbone(lq, embeds, ref=ref_image, face_mask=face_mask, has_ref=has_ref,
                                        return_latents=True)
            losses = self.reconstruction_losses(sr, gt, latents, embeds)
            face_terms, pred_faces, gt_faces = self.face_losses(sr, gt, landmarks, has_face, ref, has_ref,
                                                                matrices)
            losses.update(face_terms)
            losses.update(self.facial_generator_terms(latents, data))  # AuthFace facial loss, if configured
            loss, log_vars = self.parse_losses(losses)
        generator_wrapper.update_params(loss)
        log_vars.update(self.facial_discriminator_step(optim_wrapper))
        log_vars['num_faces'] = has_face.sum().float()
        log_vars['num_refs'] = has_ref.sum().float()

        if self.discriminator is not None:
            log_vars.update(self.discriminator_step(gt_faces, pred_faces.detach(), optim_wrapper))
        log_vars.update(self.regularizer_step(latents, embeds, optim_wrapper))
        return log_vars

    def discriminator_step(self, real_faces: Tensor, fake_faces: Tensor,
                           optim_wrapper: OptimWrapperDict) -> Dict[str, Tensor]:
        """One step of the face discriminator on GT (real) and restored (fake) face crops.

        Runs on batches without faces too (a zero loss), so every rank of a distributed run
        takes part in the discriminator's gradient all-reduce."""
        wrapper = optim_wrapper['discriminator']
        with wrapper.optim_context(self.discriminator):
            logits = self.discriminator(torch.cat([real_faces, fake_faces]))
            real_logits, fake_logits = logits.split([real_faces.shape[0], fake_faces.shape[0]])
            loss = self.adversarial_loss.discriminator_loss(real_logits, fake_logits)
        wrapper.update_params(loss)
        return dict(loss_disc=loss.detach(), disc_real=real_logits.detach().mean().nan_to_num(0),
                    disc_fake=fake_logits.detach().mean().nan_to_num(0))
