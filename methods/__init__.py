"""Method plugins: every public module here is imported by ``bench.engine.plugins.load_all``.

Modules starting with ``_`` hold shared pieces (saliency masks, distillation losses) and are not
methods themselves.
"""
