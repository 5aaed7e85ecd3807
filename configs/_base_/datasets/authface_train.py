# AuthFace stage II training data (arXiv 2410.09864, section 4.1): FFHQ resized from 1024 to 512, with the
# degradations of GFP-GAN (Wang et al. 2021) and BFRffusion. GFP-GAN options/train_gfpgan_v1.yml:
# blur_kernel_size 41, kernel_list [iso, aniso], kernel_prob [0.5, 0.5], blur_sigma [0.1, 10],
# downsample_range [0.8, 8], noise_range [0, 20], jpeg_range [60, 100], and the LQ rounded to 8 bits
# (ffhq_degradation_dataset.py). Its colour jitter (p 0.3) and grey conversion (p 0.01) are not part of
# our FaceDegradation and are left out.
gfpgan_degradation = dict(
    type='FaceDegradation',
    blur_kernel_size=41, kernel_list=('iso', 'aniso'), kernel_prob=(0.5, 0.5), blur_sigma=(0.1, 10),
    downsample_range=(0.8, 8), noise_range=(0, 20), jpeg_range=(60, 100),
    round_output=True, jpeg_backend='opencv', seed=0)
# GFP-GAN's facial component discriminators' optimiser (optim_component): Adam, lr 2e-3, betas (0.9, 0.99).
facial_discriminator_adam = dict(type='Adam', lr=2e-3, betas=(0.9, 0.99))
# FFHQ is aligned to the FFHQ-512 template: its 5 landmarks are the template's, which the facial loss
# needs to find the eyes and the mouth.
ffhq_512_train = dict(type='ImageFolderDataset', data_root='data/ffhq', resize=512, flip=True,
                      aligned_face_template='ffhq512')
