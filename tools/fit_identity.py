"""Fit a person's identity embedding for IDFSR (arXiv 2508.10937, section 3.3, stage 2) from a few photos.

    python tools/fit_identity.py PHOTOS... --config CONFIG --checkpoint CKPT -o person.safetensors
    python tools/fit_identity.py --per-identity DATA_ROOT --split finetune --config CONFIG --checkpoint CKPT -o OUT_DIR

Every network tensor stays frozen; only one embedding moves, initialised from the first photo's identity embedding
(``E_id`` of the config) and optimised with Adam under the pretraining loss (section 3.3). PHOTOS are image files
or folders of them (portraits: every photo is aligned to the FFHQ template from the landmarks of its largest face,
found by ``--detector``, default dlib's HOG detector; ``--aligned`` for FFHQ-aligned crops; ``--landmarks`` for a
JSON file of 5-point landmarks). Each photo is paired with the next photo of the person as its reference, as in
pretraining. ``--per-identity`` fits every sub-folder of DATA_ROOT (one identity each, e.g. the test identities of
CelebRef-HQ on their fine-tuning half: Table 1's "FT" rows) into ``OUT_DIR/<identity>.safetensors``.

Progress is shown with tqdm. Every ``--checkpoint-interval`` steps the complete state (embedding, Adam moments,
random generator, step) is written next to the output as ``<output>.fitting.safetensors`` (atomically); running the
same command again after a kill continues from it exactly, and finished outputs are kept (``--restart`` ignores
both). Settings default to the config's ``identity_fitting`` dict (steps, batch_size, lr, checkpoint_interval, seed).

CKPT is verified before the model is built and loaded without unpickling code (``weights_only`` / safetensors); an
https URL needs ``#sha256=<hex>`` or ``--trust-url``, as for ``tools/test.py``.

Restore with the fitted identity: ``portraitisr restore ... --identity person.safetensors``
(``PortraitRestorer.set_identity``).
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from tqdm import tqdm  # noqa: E402

#: the paper's stage-2 optimiser (section 3.3: same hyper-parameters as pretraining, Table 4); the number of steps
#: and the batch are not given (it reports 20 minutes on one RTX 3090): ours
DEFAULT_FITTING = dict(steps=1000, batch_size=4, lr=1e-4, checkpoint_interval=50, seed=0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Fit an IDFSR identity embedding to photos of one person')
    parser.add_argument('photos', nargs='*', help='photos of the person (files or folders)')
    parser.add_argument('--config', required=True, help='IDFSR config')
    parser.add_argument('--checkpoint', required=True, help='trained IDFSR checkpoint (tools/train.py output)')
    parser.add_argument('-o', '--output', required=True,
                        help='output .safetensors (a folder with --per-identity)')
    parser.add_argument('--per-identity', metavar='DATA_ROOT',
                        help='fit every identity sub-folder of DATA_ROOT instead of PHOTOS')
    parser.add_argument('--identities', help='with --per-identity: a text file of the identity folders to fit '
                        '(one per line; default every sub-folder)')
    parser.add_argument('--split', default='finetune', choices=('all', 'finetune', 'test'),
                        help='with --per-identity: which half of each identity to fit on (default finetune)')
    parser.add_argument('--num-photos', type=int, help='use only the first N photos of a person (section 5.3)')
    parser.add_argument('--aligned', action='store_true', help='photos are FFHQ-aligned face crops')
    parser.add_argument('--landmarks', help='JSON file {photo path: [[x, y] x 5]} (image pixels)')
    parser.add_argument('--detector', default='DlibFaceDetector',
                        help='FACE_DETECTORS type for photos without landmarks (default DlibFaceDetector)')
    parser.add_argument('--steps', type=int)
    parser.add_argument('--batch-size', type=int)
    parser.add_argument('--lr', type=float)
    parser.add_argument('--checkpoint-interval', type=int)
    parser.add_argument('--seed', type=int)
    parser.add_argument('--device', default=None, help="'cuda', 'cpu', ... (default CUDA when available)")
    parser.add_argument('--restart', action='store_true', help='ignore saved progress and finished outputs')
    parser.add_argument('--trust-url', action='store_true',
                        help='download a checkpoint URL that has no #sha256= (still loaded with weights_only)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries')
    args = parser.parse_args(argv)
    if bool(args.photos) == bool(args.per_identity):
        parser.error('give PHOTOS or --per-identity DATA_ROOT (not both)')
    return args


def expand_photos(paths: List[str]) -> List[str]:
    """Files as given, folders expanded to their images (sorted); a missing path is an error."""
    from portraitisr.utils.image_io import list_images

    out = []
    for path in paths:
        if osp.isdir(path):
            out += [str(p) for p in list_images(path)]
        elif osp.isfile(path):
            out.append(path)
        else:
            raise SystemExit(f'fit_identity: {path} does not exist')
    if not out:
        raise SystemExit(f'fit_identity: no images in {paths}')
    return out


def build_model(cfg: Config, checkpoint: str, device: torch.device):
    """The config's IDFSR with the trained weights of ``checkpoint`` (a verified local file)."""
    from mmengine.registry import init_default_scope

    from portraitisr.engine.checkpoint_loading import load_checkpoint_file
    from portraitisr.registry import MODELS

    init_default_scope(cfg.get('default_scope', 'portraitisr'))
    model_cfg = dict(cfg.model)
    model_cfg['init_weights'] = None  # the trained checkpoint replaces DiffAE's initialisation
    model = MODELS.build(model_cfg)
    if not hasattr(model, 'load_checkpoint') or not getattr(model, 'uses_identity', False):
        raise SystemExit(f'fit_identity: {type(model).__name__} of {cfg.filename} has no identity embedding to fit '
                         '(an IDFSR config with an identity embedder has)')
    model.load_checkpoint(load_checkpoint_file(checkpoint))  # weights_only / safetensors: nothing in it runs
    return model.to(device).eval()


def photo_items(cfg: Config, photos: List[str], args: argparse.Namespace) -> List[dict]:
    """Dataset items (aligned GT, LR, next photo as reference) of one person, in the config's geometry."""
    from portraitisr.datasets import IdentityFaceDataset

    geometry = dict(cfg.val_dataloader.dataset)
    dataset = IdentityFaceDataset(images=photos, size=geometry.get('size', 256), scale=geometry.get('scale', 8),
                                  aligned=args.aligned, landmarks_file=args.landmarks, ref_choice='next',
                                  detector=None if args.aligned or args.landmarks else dict(type=args.detector),
                                  num_photos=args.num_photos)
    return [dataset[i] for i in range(len(dataset))]


def _fingerprint(photos: List[str], settings: dict, checkpoint: str) -> str:
    text = json.dumps(dict(photos=photos, settings=settings, checkpoint=osp.abspath(checkpoint)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _atomic_save(tensors: dict, path: str, metadata: dict) -> None:
    from safetensors.torch import save_file

    tmp = f'{path}.tmp'
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def fit_one(model, items: List[dict], photos: List[str], output: str, settings: dict, checkpoint: str,
            restart: bool, label: Optional[str] = None) -> Optional[float]:
    """Fit one person into ``output``; returns the final evaluation loss (None when already done)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from portraitisr.models.algorithms.identity_fitting import IdentityFitter
    from portraitisr.models.conditioning import save_identity_embedding

    state_path = f'{output}.fitting.safetensors'
    fingerprint = _fingerprint(photos, settings, checkpoint)
    if not restart and osp.isfile(output):
        print(f'{output} exists: kept (use --restart to fit again)')
        return None
    with torch.no_grad():  # "initialized from a reference image": the first photo's embedding
        first = model.data_preprocessor({'gt': [items[0]['gt']], 'lq': [items[0]['lq']],
                                         'metainfo': [items[0]['metainfo']]}, False)
        init = model.embed_identity(first['gt'], first['face_landmarks'])[0]
    fitter = IdentityFitter(model, items, init, lr=settings['lr'], batch_size=settings['batch_size'],
                            seed=settings['seed'])
    initial_loss = fitter.evaluate()
    if not restart and osp.isfile(state_path):
        with safe_open(state_path, framework='pt') as f:
            saved = (f.metadata() or {}).get('fingerprint')
        if saved != fingerprint:
            raise SystemExit(f'{state_path} belongs to another fit (other photos, settings or checkpoint); '
                             'delete it or pass --restart')
        fitter.load_state_dict(load_file(state_path))
        print(f'resumed {state_path} at step {fitter.step_count}')
    steps, interval = settings['steps'], settings['checkpoint_interval']
    bar = tqdm(total=steps, initial=fitter.step_count, desc=label or osp.basename(output), unit='step')
    while fitter.step_count < steps:
        loss = fitter.step()
        bar.update(1)
        bar.set_postfix(loss=f'{loss:.4f}')
        if fitter.step_count % interval == 0 and fitter.step_count < steps:
            _atomic_save(fitter.state_dict(), state_path, dict(fingerprint=fingerprint))
    bar.close()
    final_loss = fitter.evaluate()
    save_identity_embedding(output, fitter.embedding, dict(
        photos=json.dumps(photos), steps=steps, lr=settings['lr'], batch_size=settings['batch_size'],
        seed=settings['seed'], checkpoint=osp.abspath(checkpoint), initial_loss=f'{initial_loss:.6f}',
        final_loss=f'{final_loss:.6f}', extractor=type(model.identity_embedder.extractor).__name__))
    if osp.isfile(state_path):
        os.remove(state_path)
    print(f'{output}: loss {initial_loss:.5f} -> {final_loss:.5f} over {len(photos)} photos, {steps} steps')
    return final_loss


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    settings = dict(DEFAULT_FITTING, **dict(cfg.get('identity_fitting', {})))
    for key in DEFAULT_FITTING:
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    from portraitisr.engine.checkpoint_loading import CHECKPOINT_ERRORS, verify_checkpoint

    try:  # before the model is built: a missing, refused or unreadable checkpoint is reported at once
        checkpoint = str(verify_checkpoint(args.checkpoint, trust_url=args.trust_url))
        model = build_model(cfg, checkpoint, device)
    except CHECKPOINT_ERRORS as error:
        raise SystemExit(f'fit_identity: {error}')
    except KeyError as error:  # IDFSR.load_checkpoint: the checkpoint is of another config
        raise SystemExit(f'fit_identity: {error.args[0]}')
    if args.per_identity:
        from portraitisr.datasets.identity_face_dataset import split_images
        from portraitisr.utils.image_io import list_images

        os.makedirs(args.output, exist_ok=True)
        names = sorted(d for d in os.listdir(args.per_identity) if osp.isdir(osp.join(args.per_identity, d)))
        if args.identities:
            with open(args.identities, encoding='utf-8') as f:
                wanted = [line.strip() for line in f if line.strip() and not line.startswith('#')]
            missing = sorted(set(wanted) - set(names))
            if missing:
                raise SystemExit(f'fit_identity: {len(missing)} identities are not folders of {args.per_identity}: '
                                 f'{missing[:5]}')
            names = [n for n in names if n in set(wanted)]
        if not names:
            raise SystemExit(f'fit_identity: no identity folders in {args.per_identity}')
        for name in names:
            photos = split_images([str(p) for p in list_images(osp.join(args.per_identity, name))], args.split)
            if not photos:
                print(f'{name}: no photos in the {args.split} split, skipped')
                continue
            items = photo_items(cfg, photos, args)
            fit_one(model, items, photos[:len(items)], osp.join(args.output, f'{name}.safetensors'), settings,
                    checkpoint, args.restart, label=name)
        return
    photos = expand_photos(args.photos)
    items = photo_items(cfg, photos, args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fit_one(model, items, photos[:len(items)], args.output, settings, checkpoint, args.restart)


if __name__ == '__main__':
    main()
