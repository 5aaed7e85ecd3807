# Table 4, row 3: the identity loss (Eq. 4-5) alone, no face fidelity loss, no reference.
# The face adversarial term of the full model stays: Table 4 does not ablate it (only row 1 drops it).
_base_ = ['../headsup_sd21.py']
model = dict(face_fidelity_loss=None, ref_dropout=1.0, use_reference_at_test=False)
# Table 4 is scored on PortraitSR-4K-Te only
test_sets = _base_.portrait_test_sets
