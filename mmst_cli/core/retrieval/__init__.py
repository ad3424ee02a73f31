"""Retrieval: tasks, search, metrics and evaluation.

Owns retrieval tasks in BEIR, ViDoRe/mteb and pair layouts (:mod:`.tasks`), exact search
(:mod:`.search`), trec_eval-exact metrics and TREC files (:mod:`.metrics`), the evaluation of a
model or a run (:mod:`.evaluation`), result files and plots (:mod:`.reports`), and the evaluation
data a training run recorded (:mod:`.run_eval_data`).

May import: ``encode``, ``models``, ``data`` and the ground.
"""
