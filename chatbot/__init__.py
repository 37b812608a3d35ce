"""madoguchi: find the support programme that fits a question, in the JPO annual report's chapter 5.

The pipeline, one module a stage: corpus (markdown → programmes) → text (normalise, MeCab) →
passages → embed (sentence-transformers / lean ONNX) → index (FAISS + BM25) → search → desk (app.py).
"""

__version__ = "0.1.0"
