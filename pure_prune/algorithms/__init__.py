"""Pruning algorithms composed from pure pieces (scores, selection, schedules, masked steps).

Each method is a sequence of rounds over a :class:`~pure_prune.algorithms.base.Carry` with injected
training (``base.TrainFn``), so the same code runs in a notebook, in a property test with no
training, and in ``pure-prune run`` with checkpoints between rounds:

``one_shot``  score, prune, fine-tune          ``gradual``  prune on a schedule during training
``imp``       lottery tickets with rewinding   ``rsst``     growing penalty, then whole channels
``refill``    IMP masks turned into channels   ``distill``  fine-tune from the dense teacher
``dst``       SET / RigL / STE at constant sparsity

Shared pieces: ``masking`` (mask forms and scoring by criterion name), ``unit_criteria`` (channel
rankings of RSST and Refill), ``base`` (carry, rounds, training callback).
"""
