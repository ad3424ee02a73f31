"""Encode: inputs to embeddings.

Owns mixed-modality encoding in input order (:mod:`.encoding`, used by evaluation and the
planner too) and the ``mmst encode`` job: the options it shares with ``mmst index``, how a corpus is read and how it
is embedded (:mod:`.settings`), reading its inputs (:mod:`.inputs`), resumable parts
(:mod:`.parts`), output precision and writers (:mod:`.writers`), the output written from finished
chunks (:mod:`.assemble`), one shard per rank under torchrun and their merge (:mod:`.shards`) and
the job itself (:mod:`.job`). Sentence Transformers' ``encode`` does the encoding.

May import: ``models``, ``data`` and the ground.
"""
