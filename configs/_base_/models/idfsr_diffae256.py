# IDFSR's network (arXiv 2508.10937, Table 4 and appendix E.2): DiffAE's FFHQ-256 autoencoder (phizaz/diffae
# templates.py:ffhq256_autoenc) with a 6-channel input (noise + masked LR) and every UNet self-attention turned into
# cross-attention on a 512-d ArcFace identity embedding. Initialised from DiffAE's published checkpoint
# (checkpoints/ffhq256_autoenc/last.ckpt, Google Drive only: save it as $PORTRAITISR_HOME/diffae_ffhq256_autoenc.ckpt).
idfsr_unet = dict(
    type='DiffAEUNet',
    image_size=256,                       # Table 4 / DiffAE-256
    in_channels=6,                        # appendix E.2: [x_t, I_M]
    out_channels=3,
    model_channels=128,                   # Table 4: base channels 128
    channel_mult=(1, 1, 2, 2, 4, 4),      # Table 4: channel multipliers
    num_res_blocks=2,
    attention_resolutions=(16, ),         # Table 4: attention resolution [16]
    embed_channels=512,
    dropout=0.1,
    enc_in_channels=3,                    # the style encoder sees the warped reference I_W
    enc_channel_mult=(1, 1, 2, 2, 4, 4, 4),  # Table 4: style encoder ch. mult.
    enc_num_res_blocks=2,
    enc_attn_resolutions=(16, ),          # Table 4: style enc. attn. resolution [16]
    enc_out_channels=512,                 # Table 4: z_s size 512
    attention='identity',                 # appendix E.2: cross-attention on the ID embedding
    id_channels=512,                      # Table 4: z_id size 512
)
# A pretrained ArcFace (Table 4 "ID Encoder"): insightface's IResNet-50 backbone.pth here (our choice of release;
# any IDENTITY_EXTRACTORS network with a 512-d embedding fits). Frozen; not needed for identity fitting.
idfsr_identity_embedder = dict(
    type='IdentityEmbedder',
    extractor=dict(type='ArcFaceIResNet', depth=50, weights='ms1mv3_arcface_r50_fp16/backbone.pth'))
idfsr_diffae_weights = 'diffae_ffhq256_autoenc.ckpt'
