"""Retrieval: tasks, search, metrics, evaluation and hard-negative mining.

Owns retrieval tasks in BEIR, ViDoRe/mteb and pair layouts (:mod:`.tasks`), exact and FAISS search
(:mod:`.search`), trec_eval-exact metrics and TREC files (:mod:`.metrics`), the evaluation of a
model or a run (:mod:`.evaluation`), result files and plots (:mod:`.reports`), the evaluation
data a training run recorded (:mod:`.run_eval_data`), and hard-negative mining: what it reads
(:mod:`.mining_data`) and its rules and output (:mod:`.mining`).

May import: ``encode``, ``models``, ``data`` and the ground.
"""
