"""Scaling out on Ray: data-parallel training (Ray Train over PyTorch DDP) and archive-scale batch jobs.

Nothing here imports Ray at module level: a single-process run never needs it installed. ``cluster`` starts or
joins a Ray cluster, ``ddp`` is what the training engine asks when it runs as one of several DDP ranks,
``train`` runs a task's training on Ray Train, ``ledger`` records finished files so a batch job resumes after a
crash, and ``batch``/``predict`` stream files through Ray tasks. See docs/scale.md.
"""
