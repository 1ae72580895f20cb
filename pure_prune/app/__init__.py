"""The application above the library: what ``pure-prune`` runs.

Data loaders (:mod:`~pure_prune.app.data`), the run configuration
(:mod:`~pure_prune.app.runconfig`), run directories and checkpoints, the round loop
(:mod:`~pure_prune.app.runner`), grid sweeps (:mod:`~pure_prune.app.sweep`), torchrun
(:mod:`~pure_prune.app.distributed`), reports and the CLI. The library below (``pure_prune.<module>``
for each name of ``pure_prune.LIBRARY_MODULES``) never imports anything from here; a test holds that.
"""
