"""Controlled experiment: does HeadsUp's face fidelity loss (Eq. 3) help the face more than the image?

Two runs of ``configs/debug/headsup_tiny.py`` that differ only in the face fidelity loss (identity and
adversarial terms and references off in both, same seed, same steps, same data). Both are evaluated on
held-out photos (LQ from the degradation with a fixed seed, crops centred on the face) with whole-image
PSNR and face-region PSNR (:class:`~portraitisr.evaluation.metrics.FacePSNR`). The loss should raise the
face-region PSNR more than the whole-image PSNR.

The tiny config's SD parts are random: its frozen VAE decoder cannot draw a face, and its UNet's noise estimate,
amplified 1/alpha = 14.6 times by the one-step update, swamps the image, so both runs would sit at the same low PSNR
(measured: about 14 dB either way). The experiment therefore first gives the tiny model a prior, as SD's
pretraining does for the real model: the tiny VAE is trained as an autoencoder on the training photos
(``--vae-steps``), then the whole tiny UNet learns the one-step identity (``z_H = z_L``, ``--unet-steps``), so
that training starts from an output near the LQ, as OSEDiff starts from SD. Both runs load that diffusers folder
(``model.backbone.pretrained``); LoRA trains on top of it as usual.

Photos: the package photos plus, with ``--photos DIR``, every image in DIR (recursively), e.g. the published test data
``$PORTRAITISR_TEST_DATA/portraits_lq`` (``python tools/fetch_test_data.py portraits_lq``). Faces are found with dlib's
HOG detector; every ``--holdout``-th photo with a face is held out for evaluation.

    python tools/experiments/face_fidelity_experiment.py --photos $PORTRAITISR_TEST_DATA/portraits_lq \
        --steps 300 --seeds 0 1 --work-dir work_dirs/face_fidelity_experiment
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)

CONFIG = osp.join(REPO, 'configs', 'debug', 'headsup_tiny.py')
SAMPLE_PHOTOS = ['sample://astronaut', 'sample://grace_hopper']


def find_faces(photos: List[str]) -> List[str]:
    """Manifest lines (no references) of the photos in which dlib finds a face."""
    import numpy as np

    from portraitisr.datasets.image_folder_dataset import read_rgb
    from portraitisr.datasets.portrait_triplet_dataset import manifest_line
    from portraitisr.face.detection import DlibFaceDetector

    detector = DlibFaceDetector(model='hog', upsample_times=1)
    lines = []
    for path in photos:
        image = read_rgb(path)
        found = detector.detect(image)[0]
        faces = [dict(box=np.round(box, 2).tolist(), landmarks=np.round(points, 2).tolist(), references=[])
                 for box, points in zip(found.boxes, found.landmarks)]
        print(f'{path}: {len(faces)} face(s)')
        if faces:
            lines.append(manifest_line(path, faces, height=image.shape[0], width=image.shape[1]))
    return lines


def final_metrics(work_dir: str) -> Dict[str, float]:
    """The last validation scores mmengine wrote to ``<work_dir>/<timestamp>/vis_data/scalars.json``."""
    runs = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    if not runs:
        raise FileNotFoundError(f'no scalars.json under {work_dir}: did the run fail?')
    scores = {}
    for line in runs[-1].read_text().splitlines():
        record = json.loads(line)
        if 'PSNR' in record:
            scores = dict(PSNR=record['PSNR'], FacePSNR=record['FacePSNR'], step=record['step'])
    return scores


def pretrain_tiny_prior(manifest: str, out_dir: str, steps: int, unet_steps: int, seed: int = 0) -> str:
    """Train the tiny VAE as an autoencoder (MSE, posterior mode) on random 128 crops of the training photos, then
    the tiny UNet to the one-step identity; save both with SD 2.1's scheduler as a diffusers folder."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from mmengine.config import Config
    from tqdm import tqdm

    from portraitisr.datasets import PortraitTripletDataset

    if osp.isfile(osp.join(out_dir, 'vae', 'config.json')):
        return out_dir  # resumable: the prior is trained once per work dir
    tiny = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'models', 'tiny_sd.py'))
    torch.manual_seed(seed)
    np.random.seed(seed)
    vae = AutoencoderKL(**tiny.tiny_vae_cfg)
    unet = UNet2DConditionModel(**tiny.tiny_unet_cfg)
    data = PortraitTripletDataset(manifest, crop_size=128, flip=True, unit='face')
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in tqdm(range(steps), desc='tiny VAE prior'):
        batch = torch.stack([data[int(i)]['gt'] for i in np.random.randint(0, len(data), 4)]) * 2 - 1
        reconstruction = vae.decode(vae.encode(batch).latent_dist.mode()).sample
        loss = torch.nn.functional.mse_loss(reconstruction, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f'tiny VAE prior: reconstruction MSE {loss.item():.4f} on [-1, 1] after {steps} steps')
    # UNet: eps such that (z_L - beta * eps) / alpha = z_L, at t = 999 with SD 2.1's schedule
    scheduler = DDPMScheduler(**tiny.sd21_scheduler_cfg)
    alpha_bar = scheduler.alphas_cumprod[999]
    alpha, beta = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    vae.requires_grad_(False)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    embeds = torch.zeros(4, 77, tiny.tiny_unet_cfg.cross_attention_dim)
    timesteps = torch.full((4, ), 999)
    for _ in tqdm(range(unet_steps), desc='tiny UNet prior'):
        batch = torch.stack([data[int(i)]['gt'] for i in np.random.randint(0, len(data), 4)]) * 2 - 1
        with torch.no_grad():
            latents = vae.encode(batch).latent_dist.mode() * vae.config.scaling_factor
        eps = unet(latents, timesteps, encoder_hidden_states=embeds).sample
        loss = torch.nn.functional.mse_loss(eps, latents * (1 - alpha) / beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f'tiny UNet prior: one-step identity MSE {loss.item():.5f} after {unet_steps} steps')
    vae.save_pretrained(osp.join(out_dir, 'vae'))
    unet.save_pretrained(osp.join(out_dir, 'unet'))
    DDPMScheduler(**tiny.sd21_scheduler_cfg).save_pretrained(osp.join(out_dir, 'scheduler'))
    return out_dir


EXPERIMENT_CONFIG = """_base_ = [{base!r}]
# identity and adversarial terms and references off: the runs differ only in the face fidelity loss
model = dict(identity_loss=None, identity_aligner=None, discriminator=None, adversarial_loss=None,
             ref_dropout=1.0, use_reference_at_test=False{fidelity}{vsd},
             backbone=dict(pretrained={prior!r}))
optim_wrapper = dict(backbone=dict(optimizer=dict(lr={lr})), {regularizer_optim}discriminator=None)
randomness = dict(seed={seed})
train_cfg = dict(max_iters={steps}, val_interval={steps})
default_hooks = dict(checkpoint=dict(interval={steps}))
train_dataloader = dict(dataset=dict(manifest={train!r}, repeat=1))
val_dataloader = dict(dataset=dict(manifest={test!r}))
test_dataloader = val_dataloader
val_evaluator = [dict(type='PSNR'),
                 dict(type='FacePSNR', aligner=dict(type='FaceAligner', template='ffhq512', output_size=64))]
test_evaluator = val_evaluator
"""


def train(work_dir: str, train_manifest: str, test_manifest: str, prior: str, steps: int, seed: int, lr: float,
          face_fidelity: bool, vsd_weight: float) -> Dict[str, float]:
    os.makedirs(work_dir, exist_ok=True)
    config = osp.join(work_dir, 'experiment_config.py')
    # without VSD the regulariser (and its optimiser) is dropped rather than trained for nothing
    vsd = f', vsd_weight={vsd_weight}' if vsd_weight > 0 else ', regularizer=None'
    regularizer_optim = f'regularizer=dict(optimizer=dict(lr={lr})), ' if vsd_weight > 0 else 'regularizer=None, '
    Path(config).write_text(EXPERIMENT_CONFIG.format(
        base=CONFIG, prior=prior, seed=seed, steps=steps, lr=lr, train=train_manifest, test=test_manifest,
        fidelity='' if face_fidelity else ', face_fidelity_loss=None', vsd=vsd,
        regularizer_optim=regularizer_optim))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'))
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', work_dir],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return final_metrics(work_dir)


def lq_baseline(config: str) -> Dict[str, float]:
    """PSNR and FacePSNR of the bicubic-upscaled LQ on the held-out photos: the same LQs (degradation, seeds) and
    metrics as the runs' validation, without any model. A restorer should score above it."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from portraitisr.registry import DATASETS, FUNCTIONS, METRICS, MODELS

    init_default_scope('portraitisr')
    cfg = Config.fromfile(config)
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    collate = FUNCTIONS.get(cfg.val_dataloader.collate_fn.type)
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    metrics = [METRICS.build(m) for m in cfg.val_evaluator]
    for index in range(len(dataset)):
        data = preprocessor(collate([dataset[index]]), False)  # inputs: the LQ, bicubic-upscaled to the GT size
        samples = [dict(pred=data['inputs'][0], gt=data['gt'][0], metainfo=data['metainfo'][0])]
        for metric in metrics:
            metric.process(None, samples)
    scores = {}
    for metric in metrics:
        scores.update(metric.compute_metrics(metric.results))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--photos', default=None, help='extra folder of photos with faces')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--lr', type=float, default=1e-3, help='AdamW learning rate of both runs')
    parser.add_argument('--vae-steps', type=int, default=1000, help='autoencoder steps of the tiny VAE prior')
    parser.add_argument('--unet-steps', type=int, default=500, help='one-step identity steps of the tiny UNet prior')
    parser.add_argument('--vsd-weight', type=float, default=0.0,
                        help='VSD weight of both runs; 0 (default) drops the regulariser, whose tiny random '
                        'weights would only add noise to a comparison of the face term')
    parser.add_argument('--holdout', type=int, default=3, help='hold out every N-th photo with a face')
    parser.add_argument('--work-dir', default='work_dirs/face_fidelity_experiment')
    args = parser.parse_args()

    from portraitisr.utils.image_io import list_images

    photos = list(SAMPLE_PHOTOS)
    if args.photos:
        # absolute: manifest paths are relative to the manifest, which lives in the work dir
        photos += sorted(osp.abspath(p) for p in list_images(args.photos, recursive=True))
    lines = find_faces(photos)
    held_out = lines[args.holdout - 1::args.holdout]
    training = [line for line in lines if line not in held_out]
    if not held_out or not training:
        raise SystemExit(f'{len(lines)} photos with faces: too few to hold some out (add --photos)')
    os.makedirs(args.work_dir, exist_ok=True)
    train_manifest = osp.abspath(osp.join(args.work_dir, 'train.jsonl'))
    test_manifest = osp.abspath(osp.join(args.work_dir, 'heldout.jsonl'))
    Path(train_manifest).write_text('\n'.join(training) + '\n')
    Path(test_manifest).write_text('\n'.join(held_out) + '\n')
    print(f'{len(training)} training photos, {len(held_out)} held-out photos')

    prior = pretrain_tiny_prior(train_manifest, osp.abspath(osp.join(args.work_dir, 'tiny_prior')), args.vae_steps,
                                args.unet_steps)
    rows = []
    for seed in args.seeds:
        runs = {}
        for face_fidelity in (False, True):
            name = f'seed{seed}_' + ('fid' if face_fidelity else 'baseline')
            runs[face_fidelity] = train(osp.join(args.work_dir, name), train_manifest, test_manifest, prior,
                                        args.steps, seed, args.lr, face_fidelity, args.vsd_weight)
        delta_face = runs[True]['FacePSNR'] - runs[False]['FacePSNR']
        delta_whole = runs[True]['PSNR'] - runs[False]['PSNR']
        rows.append((seed, runs[False], runs[True], delta_face, delta_whole))

    lq = lq_baseline(osp.join(args.work_dir, f'seed{args.seeds[0]}_baseline', 'experiment_config.py'))
    print(f'\n{args.steps} steps at lr {args.lr}, VSD weight {args.vsd_weight}, {len(training)} training and '
          f'{len(held_out)} held-out photos; bicubic LQ: PSNR {lq["PSNR"]:.3f}, FacePSNR {lq["FacePSNR"]:.3f}')
    print('| seed | PSNR base | PSNR +fid | FacePSNR base | FacePSNR +fid | delta face | delta whole |')
    print('|---|---|---|---|---|---|---|')
    for seed, base, fid, delta_face, delta_whole in rows:
        print(f'| {seed} | {base["PSNR"]:.3f} | {fid["PSNR"]:.3f} | {base["FacePSNR"]:.3f} | '
              f'{fid["FacePSNR"]:.3f} | {delta_face:+.3f} | {delta_whole:+.3f} |')
    mean_face = sum(r[3] for r in rows) / len(rows)
    mean_whole = sum(r[4] for r in rows) / len(rows)
    verdict = 'rises more' if mean_face > mean_whole else 'does NOT rise more'
    print(f'\nmean delta: face {mean_face:+.3f} dB, whole image {mean_whole:+.3f} dB: face-region PSNR {verdict}')


if __name__ == '__main__':
    main()
