# Table 4, row 1: no face fidelity loss, no identity loss, no reference. The face adversarial
# term is not a column of Table 4 and stays as in the full model.
_base_ = ['../headsup_sd21.py']
model = dict(face_fidelity_loss=None, identity_loss=None, ref_dropout=1.0,
             use_reference_at_test=False)
# Table 4 is scored on PortraitSR-4K-Te only
test_sets = _base_.portrait_test_sets
