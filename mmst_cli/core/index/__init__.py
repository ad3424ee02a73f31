"""Index: search indexes over an embedded corpus (``mmst index`` / ``mmst search``).

Owns the index folder's layout and manifest (:mod:`.layout`), the FAISS indexes it holds, exact,
IVF or HNSW over float, int8 or binary vectors (:mod:`.vector_index`), building and growing an
index from any corpus ``mmst encode`` reads (:mod:`.build`, which runs the encode job for the
embedding, its parts and its resume), and searching it with text, media or a queries file,
optionally reranked (:mod:`.searching`). Multi-vector models get exact MaxSim over stored token
vectors (:func:`mmst_cli.core.retrieval.maxsim.maxsim_top_k`). FAISS does the vector search.

May import: ``retrieval``, ``encode``, ``models``, ``data`` and the ground.
"""
