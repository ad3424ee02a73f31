"""The HTML results page: what a model retrieves, as one self-contained file to open in a browser.

Owns the page and its entry point (:mod:`.page`: the query/hit dataclasses that ``mmst evaluate``
and ``mmst search`` fill, ordering worst first, escaping, atomic writing), the embedded previews
of text, images, PDF pages, audio and video frames (:mod:`.thumbnails`), the Matryoshka sweep as
inline SVG (:mod:`.chart`) and the page of an evaluation (:mod:`.evaluation_page`).

May import: ``retrieval``, ``encode``, ``models``, ``data`` and the ground.
"""
