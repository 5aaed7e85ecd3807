# CelebRef-HQ (Zhao et al. 2023, DMDNet) as IDFSR uses it (arXiv 2508.10937, section 4.1 and appendix D): 1,005
# identities, 10,555 FFHQ-aligned 512x512 faces, one folder per identity. IDFSR samples 10% of the identities for
# testing and pretrains on the rest ("approximately 900 IDs and 9,000 images"); each test identity is split equally into
# a fine-tuning half and a test half ("56 IDs and 586 images" after filtering). The paper does not publish which
# identities it sampled: list yours in the two files below (one folder name per line).
celebref_root = 'data/CelebRef-HQ'
celebref_train_ids = 'data/CelebRef-HQ/train_identities.txt'
celebref_test_ids = 'data/CelebRef-HQ/test_identities.txt'
# The faces are FFHQ-aligned crops; their five landmarks come from RetinaFace on the HQ image (section 3.2: "We use
# RetinaFace to extract facial landmarks from HQ images"; the LR-fine-tuned detector of appendix E.4 is not public,
# so at test time the landmarks of the HQ face stand in for those detected on the LR). Alternatively give
# landmarks_file='data/CelebRef-HQ/landmarks.json' ({"identity/image.png": [[x, y] x 5]}).
celebref_detector = dict(type='RetinaFaceDetector')
# DiffAE's FFHQ-256 resolution (Table 4); the LR is bicubic x8 or x16 (Table 1).
celebref_size = 256

# pretraining identities, all their images; random same-identity references; DiffAE's random horizontal flip
celebref_train = dict(type='IdentityFaceDataset', data_root=celebref_root, identities=celebref_train_ids, split='all',
                      size=celebref_size, aligned=True, detector=celebref_detector, ref_choice='random', flip=True)
# held-out identities, test half; references from the identity's fine-tuning half (never a test image)
celebref_test = dict(type='IdentityFaceDataset', data_root=celebref_root, identities=celebref_test_ids, split='test',
                     size=celebref_size, aligned=True, detector=celebref_detector, ref_choice='next',
                     ref_pool='finetune')
