# OSEDiff_Face (train_osediff_face.py): the same model trained on FFHQ 512 faces with the
# CodeFormer face degradation, face negative prompt, no colour fix at test time (x1 restoration).
_base_ = ['./osediff_sd21.py']

model = dict(
    negative_prompt=('blurring, dirty, messy, worst quality, low quality, frames, watermark, '
                     'signature, jpeg artifacts, deformed, lowres, over-smooth'),
    color_fix=None,
    # params_codeformer.yml run by dataloaders/facesr_dataset.py: no GT sharpening, the target is the face itself
    data_preprocessor=dict(degradation='codeformer_face'),
)
# facesr_dataset.py: LANCZOS to 512, horizontal flip and BasicSR rotation augmentation.
train_dataloader = dict(
    dataset=dict(type='ImageFolderDataset', data_root='data/ffhq512', file_list=None,
                 resize=512, crop_size=None, flip=True, rotate90=True))
test_dataloader = dict(
    dataset=dict(type='PairedImageFolderDataset', lq_root='data/celeba_test/lq',
                 gt_root='data/celeba_test/gt', upscale=1))
test_evaluator = [dict(type='PSNR', prefix='CelebA-Test')]
val_dataloader = test_dataloader
val_evaluator = test_evaluator
