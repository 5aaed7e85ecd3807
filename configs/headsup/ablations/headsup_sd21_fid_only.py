# Table 4, row 2: the face fidelity loss (Eq. 3) alone, no identity loss, no reference.
# The face adversarial term of the full model stays: Table 4 does not ablate it (only row 1 drops it).
_base_ = ['../headsup_sd21.py']
model = dict(identity_loss=None, ref_dropout=1.0, use_reference_at_test=False)
# Table 4 is scored on PortraitSR-4K-Te only
test_sets = _base_.portrait_test_sets
