# OSEDiff's training data: LSDIR (84,991 images) plus the first 10k FFHQ images, 512 random crops
# with horizontal flips; LQs made online by the Real-ESRGAN degradation (`osediff` preset, run
# batched on the GPU by the data preprocessor). List the image paths in `train_list`.
train_data_root = 'data/osediff_train'
train_list = 'data/osediff_train/train_list.txt'
train_dataloader = dict(
    batch_size=4,  # per GPU; OSEDiff: 4 x 4 GPUs
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ImageFolderDataset', data_root=train_data_root, file_list=train_list,
                 crop_size=512, flip=True),
)
