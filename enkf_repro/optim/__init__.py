"""Ensemble Kalman numerics as pure functions and small objects (tensors in, tensors out).

- :mod:`.schedulers`: step-size schedulers (fixed, Kovachki-Stuart, Iglesias-Yang data-misfit
  controller) with checkpointable state.
- :mod:`.etki`: ensemble transform Kalman inversion, the update done in ensemble space.
- :mod:`.inflation`: multiplicative and additive inflation of an ensemble, in place.

Conventions: ensemble U (J, P) with members as rows, outputs G (J, d) or (J, B, C), data y
(d,) or (B, C), observation noise Gamma = diag(gamma) given as a scalar or as d variances.
"""
