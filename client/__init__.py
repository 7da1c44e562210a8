"""shopclip.client"""
