# Table 4, row 1 (HeadsUp, arXiv 2510.09924, section 4.4: "without face-aware supervision (first row)"): no face-aware
# supervision at all and no reference (x_r = 0, M = 0). Section 2.3 defines the face-aware supervision L_F as
# the fidelity, identity and face adversarial terms (Eq. 2-3), so the adversarial term and its discriminator go
# too: the model is OSEDiff's recipe on HeadsUp's data. Table 4 has no adversarial column, so this is our reading;
# headsup_sd21_no_face_losses_keep_adv.py is the other one (fidelity and identity off, adversarial kept).
_base_ = ['../headsup_sd21.py']
model = dict(face_fidelity_loss=None, identity_loss=None, discriminator=None, adversarial_loss=None,
             ref_dropout=1.0, use_reference_at_test=False)
# no discriminator, no discriminator optimiser (TrainableParamsOptimWrapperConstructor drops None keys)
optim_wrapper = dict(discriminator=None)
# Table 4 is scored on PortraitSR-4K-Te only
test_sets = _base_.portrait_test_sets
