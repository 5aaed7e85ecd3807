# configs/debug/authface_controlnet_tiny.py under FlexibleRunner + FSDP2: the frozen UNet, the trainable
# ControlNet and the two facial discriminators are sharded (every trainable parameter must be), the VAE
# and text encoders replicated.   bash tools/dist_train.sh configs/debug/authface_controlnet_tiny_fsdp.py 2
_base_ = ['./authface_controlnet_tiny.py']

runner_type = 'PortraitFlexibleRunner'
strategy = dict(
    type='FSDP2Strategy',
    shard_modules=['backbone.unet', 'backbone.controlnet', 'facial_loss.discriminators.eyes',
                   'facial_loss.discriminators.mouth'],
    block_classes=['ResnetBlock2D', 'BasicTransformerBlock'])
train_dataloader = dict(batch_size=1)
