"""shopclip.indexer"""
