# Table 4, row 1, the other reading: the two ablated columns (face fidelity L_F^fid and identity L_F^id) off and
# no reference, while the face adversarial term of the full model (its discriminator, weight and optimiser) stays.
# The paper's reading is headsup_sd21_no_face_losses.py ("without face-aware supervision", section 4.4, drops
# every face term).
_base_ = ['../headsup_sd21.py']
model = dict(face_fidelity_loss=None, identity_loss=None, ref_dropout=1.0, use_reference_at_test=False)
# Table 4 is scored on PortraitSR-4K-Te only
test_sets = _base_.portrait_test_sets
