"""shopclip.training"""
