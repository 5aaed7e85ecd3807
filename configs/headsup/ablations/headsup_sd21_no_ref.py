# Table 4, row 4: both face losses, trained and tested without references (x_r = 0, M = 0).
# Row 5 (with references) is configs/headsup/headsup_sd21.py.
# The face adversarial term of the full model stays: Table 4 does not ablate it (only row 1 drops it).
_base_ = ['../headsup_sd21.py']
model = dict(ref_dropout=1.0, use_reference_at_test=False)
# Table 4 is scored on PortraitSR-4K-Te only
test_sets = _base_.portrait_test_sets
