"""Offline knowledge curation: sources -> curated items -> stores (FAISS + BM25 + SQLite, Elasticsearch)."""
