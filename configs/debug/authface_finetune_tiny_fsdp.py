# configs/debug/authface_finetune_tiny.py through mmengine's FlexibleRunner with our FSDP2 strategy:
# the tiny SDXL-shaped UNet is sharded over the processes (gloo on CPUs, NCCL on GPUs), its ResNet and
# transformer blocks are FSDP2 units, and checkpoints gather the shards into the usual single file.
#   bash tools/dist_train.sh configs/debug/authface_finetune_tiny_fsdp.py 2
# Each sample's noise, timestep and VAE posterior draw come from a generator seeded by (noise_seed,
# iteration, dataset index), so 2 processes with batch 1 train exactly what 1 process with batch 2 does
# (tests/test_engine/test_sharded_training.py).
_base_ = ['./authface_finetune_tiny.py']

runner_type = 'PortraitFlexibleRunner'
strategy = dict(
    type='FSDP2Strategy',
    shard_modules=['backbone.unet'],
    block_classes=['ResnetBlock2D', 'BasicTransformerBlock'])
model = dict(noise_seed=1234)
train_dataloader = dict(batch_size=1)
